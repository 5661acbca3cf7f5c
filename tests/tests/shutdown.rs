//! Graceful shutdown: in-flight requests finish, then the server stops; past the deadline what is
//! left is cut.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use sluice::server::ShutdownOutcome;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, http1_client, send};
use tokio::sync::{Notify, mpsc};

/// An origin that reports each request's arrival and answers only when released.
pub(crate) async fn held_origin() -> (Origin, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let origin = Origin::start(move |_request| {
        let arrived = arrived_tx.clone();
        let release = held.clone();
        Box::pin(async move {
            let _ = arrived.send(());
            release.notified().await;
            Response::new(body::full("finished"))
        })
    })
    .await;
    (origin, arrived_rx, release)
}

fn config(origin: &Origin) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
        origin.addr
    )
}

#[tokio::test]
async fn shutdown_lets_in_flight_request_finish() {
    let (origin, arrived, release) = held_origin().await;
    let proxy = TestProxy::start(&config(&origin)).await;
    assert_shutdown_drains_a_held_request(proxy, arrived, release).await;
}

/// Starts a request the origin holds, shuts `proxy` down, and checks that the listener closes
/// while the request is in flight, that the request then finishes, and that the shutdown drained.
pub(crate) async fn assert_shutdown_drains_a_held_request(
    mut proxy: TestProxy,
    mut arrived: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
) {
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move {
        send(&http1_client(), Request::get(url).header("host", "a").body(body::empty()).unwrap()).await
    });
    arrived.recv().await.expect("request reached the origin");

    let server = proxy.take_server();
    let shutdown = tokio::spawn(server.shutdown_within(Duration::from_secs(60)));
    // Draining has begun once the listener (every socket of it) is closed; the request is still
    // held at the origin.
    while tokio::net::TcpStream::connect(proxy.addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(!in_flight.is_finished());
    release.notify_one();

    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "finished");
    assert_eq!(shutdown.await.unwrap(), ShutdownOutcome::Drained);
}

#[tokio::test]
async fn shutdown_cuts_what_outlives_the_deadline() {
    let (origin, mut arrived, _release) = held_origin().await;
    let mut proxy = TestProxy::start(&config(&origin)).await;
    let url = proxy.url("/forever");
    let in_flight = tokio::spawn(async move {
        http1_client().request(Request::get(url).header("host", "a").body(body::empty()).unwrap()).await
    });
    arrived.recv().await.expect("request reached the origin");

    let outcome = proxy.take_server().shutdown_within(Duration::from_millis(100)).await;
    assert_eq!(outcome, ShutdownOutcome::Cut(1));
    assert!(in_flight.await.unwrap().is_err(), "the cut request must fail, not hang");
}
