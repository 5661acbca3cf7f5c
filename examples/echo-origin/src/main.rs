//! An origin server for trying Sluice out: it answers every request with a JSON description of
//! what it received (its own name, method, path, headers and body size), so that what the proxy
//! changed on the way is plain to see.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Answers every request with a JSON echo of it.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Name reported in every answer, to tell servers of one upstream apart.
    #[arg(long, default_value = "echo")]
    name: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("echo-origin {} listening on {}", args.name, listener.local_addr()?);
    let name: &'static str = Box::leak(args.name.into_boxed_str());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(move |request| echo(name, request));
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn echo(name: &str, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body_bytes = body.collect().await.map(|collected| collected.to_bytes().len()).unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(key, value)| (key.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned().into()))
        .collect();
    let description = serde_json::json!({
        "origin": name,
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut text = serde_json::to_string_pretty(&description).unwrap_or_default();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert("content-type", "application/json".parse().expect("static value"));
    response.headers_mut().insert("server", "echo-origin".parse().expect("static value"));
    Ok(response)
}
