//! Bodies stream through the proxy: 100 MB up and 100 MB down while the process's live heap stays
//! within a few megabytes. The whole test process (client, proxy and origin) is measured by a
//! counting allocator, so any of the three buffering a body whole would fail the test. The
//! allocator counts for the whole suite binary; the suite runs each test in a process of its own
//! (cargo-nextest), so only this test's allocations are counted here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sluice_http::body::BoxError;
use sluice_tests::{Origin, TestProxy, http1_client};

/// Counts live heap bytes and remembers the highest count.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 1600; // 100 MiB
static ZEROS: [u8; CHUNK] = [0; CHUNK];
/// Well above what a streaming path holds (socket buffers, one frame per hop), well below 100 MB.
const HEAP_BUDGET: usize = 16 * 1024 * 1024;

fn hundred_megabytes() -> sluice_http::body::ProxyBody {
    let chunks = (0..CHUNKS).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from_static(&ZEROS))));
    StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync()
}

/// Reads a body frame by frame, counting bytes without keeping them.
async fn drain(mut body: impl hyper::body::Body<Data = Bytes, Error = impl std::fmt::Debug> + Unpin) -> usize {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            total += data.len();
        }
    }
    total
}

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_in_bounded_memory() {
    let origin = Origin::start(|request| {
        Box::pin(async move {
            if request.method() == http::Method::POST {
                let received = drain(request.into_body()).await;
                Response::new(sluice_http::body::full(received.to_string()))
            } else {
                Response::new(hundred_megabytes())
            }
        })
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "[server]\nmax_body_bytes = 200000000\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
        origin.addr
    ))
    .await;
    let client = http1_client();

    // Download.
    let baseline = reset_peak();
    let response =
        client.request(Request::get(proxy.url("/big")).body(sluice_http::body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(drain(response.into_body()).await, CHUNK * CHUNKS);
    let growth = PEAK.load(Ordering::Relaxed) - baseline;
    assert!(growth < HEAP_BUDGET, "download grew the heap by {growth} bytes");

    // Upload, chunked.
    let baseline = reset_peak();
    let request = Request::post(proxy.url("/upload")).body(hundred_megabytes()).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received, (CHUNK * CHUNKS).to_string());
    let growth = PEAK.load(Ordering::Relaxed) - baseline;
    assert!(growth < HEAP_BUDGET, "upload grew the heap by {growth} bytes");
}
