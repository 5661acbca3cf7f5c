//! Response compression throughput per encoding and level: a 256 KiB HTML page, streamed in
//! 16 KiB chunks through the same code path as a proxied response.
//!
//! Run: `cargo bench -p sluice-benches --bench compression`

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderValue, Method, Response};
use http_body_util::BodyExt;
use hyper::body::Frame;
use sluice_http::body::{self, BoxError};
use sluice_http::compression::{CompressionLevel, CompressionSettings, Encoding, compress};

fn page() -> Bytes {
    let mut html = String::from("<!doctype html><html><head><title>Catalogue</title></head><body><ul>\n");
    let mut line = 0;
    while html.len() < 256 * 1024 {
        html.push_str(&format!(
            "<li class=\"item\" data-id=\"{line}\"><a href=\"/products/{line}\">Product {line}</a> <span class=\"price\">{}.{:02} EUR</span></li>\n",
            line % 97 + 3,
            line % 100
        ));
        line += 1;
    }
    html.push_str("</ul></body></html>\n");
    Bytes::from(html)
}

fn response(page: &Bytes) -> Response<body::ProxyBody> {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        page.chunks(16 * 1024).map(|chunk| Ok(Frame::data(page.slice_ref(chunk)))).collect();
    let mut response = Response::new(body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))));
    response.headers_mut().insert("content-type", HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn compression(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let page = page();
    let mut group = c.benchmark_group("compression");
    group.throughput(Throughput::Bytes(page.len() as u64));
    for (encoding, token) in [(Encoding::Gzip, "gzip"), (Encoding::Brotli, "br"), (Encoding::Zstd, "zstd")] {
        for (level, level_name) in [(CompressionLevel::Fastest, "fastest"), (CompressionLevel::Default, "default")] {
            let settings = Arc::new(CompressionSettings {
                encodings: vec![encoding],
                min_bytes: 0,
                content_types: vec!["text/".into()],
                level,
            });
            let accept = HeaderValue::from_static(token);
            let compressed_size = runtime.block_on(async {
                let compressed = compress(response(&page), &settings, &Method::GET, Some(&accept));
                compressed.into_body().collect().await.unwrap().to_bytes().len()
            });
            println!("{token} {level_name}: {} -> {compressed_size} bytes", page.len());
            group.bench_with_input(BenchmarkId::new(token, level_name), &settings, |b, settings| {
                b.iter(|| {
                    runtime.block_on(async {
                        let compressed = compress(response(&page), settings, &Method::GET, Some(&accept));
                        compressed.into_body().collect().await.unwrap().to_bytes().len()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
