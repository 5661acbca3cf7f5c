//! Serving on worker threads (`sluice run`'s way): each worker accepts on its own socket of one
//! `SO_REUSEPORT` group and keeps its own upstream pool; configuration, limits and shutdown are
//! the same as on one runtime.

use std::collections::HashSet;
use std::time::Duration;

use sluice::server::ShutdownOutcome;
use sluice_tests::{Origin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(origin: &Origin, extra_route: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n{extra_route}",
        origin.addr
    )
}

/// Sends `count` keep-alive GETs on one connection and returns each response head and body.
async fn keep_alive_requests(addr: std::net::SocketAddr, count: usize) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut answers = Vec::new();
    for index in 0..count {
        let request = format!("GET /item/{index} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        answers.push(read_response(&mut stream).await);
    }
    answers
}

/// Reads one response with a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.expect("read");
        assert!(read > 0, "connection closed mid-response: {}", String::from_utf8_lossy(&buffer));
        buffer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&buffer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|value| value.parse::<usize>().ok())
                .expect("a content-length");
            if buffer.len() >= end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_many_connections_with_one_config_and_reload_reaches_all() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start_workers(&config(&origin, ""), 2).await;
    let clients: Vec<_> = (0..16).map(|_| tokio::spawn(keep_alive_requests(proxy.addr, 3))).collect();
    for client in clients {
        for answer in client.await.unwrap() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }

    // A reload is seen by every worker's connections, new and kept alive alike.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    kept.write_all(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut kept).await.starts_with("HTTP/1.1 200"));
    let second = Origin::echo("second-origin").await;
    proxy.server().reloader().reload_from_toml(&config(&second, "")).await.expect("reload");
    kept.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut kept).await.contains("second-origin"));
    let fresh: Vec<_> = (0..8).map(|_| tokio::spawn(keep_alive_requests(proxy.addr, 1))).collect();
    for client in fresh {
        let answer = client.await.unwrap().remove(0);
        assert!(answer.contains("second-origin"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_upstream_connections() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start_workers(&config(&origin, ""), 2).await;
    // Requests one after another on one client connection stay on one worker, whose pooled
    // upstream connection carries every one of them.
    let answers = keep_alive_requests(proxy.addr, 20).await;
    assert!(answers.iter().all(|answer| answer.starts_with("HTTP/1.1 200")));
    assert_eq!(origin.connections_accepted(), 1);
    // Many client connections at once open no more upstream connections than requests in
    // flight can need, and each worker's pool is its own.
    let clients: Vec<_> = (0..8).map(|_| tokio::spawn(keep_alive_requests(proxy.addr, 5))).collect();
    for client in clients {
        client.await.unwrap();
    }
    assert!(origin.connections_accepted() <= 1 + 8, "{} upstream connections", origin.connections_accepted());
}

#[tokio::test]
async fn an_address_in_use_fails_the_start_rather_than_sharing_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = Origin::echo("app").await;
    let source = config(&origin, "").replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string());
    let snapshot = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &source).unwrap();
    let error = sluice::server::Server::start_workers(snapshot, 2).await.expect_err("the address is taken");
    assert!(error.to_string().contains("cannot listen on"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_workers_drains_in_flight_requests_then_closes_every_socket() {
    let (origin, arrived, release) = super::shutdown::held_origin().await;
    let proxy = TestProxy::start_workers(&config(&origin, ""), 2).await;
    super::shutdown::assert_shutdown_drains_a_held_request(proxy, arrived, release).await;
}

#[tokio::test]
async fn worker_threads_are_named_and_end_with_the_shutdown() {
    let origin = Origin::echo("app").await;
    let mut proxy = TestProxy::start_workers(&config(&origin, ""), 3).await;
    let expected: HashSet<String> = (0..3).map(|index| format!("sluice-worker-{index}")).collect();
    // A thread takes its name once it runs.
    while !expected.is_subset(&worker_thread_names()) {
        tokio::task::yield_now().await;
    }
    let outcome = proxy.take_server().shutdown_within(Duration::from_secs(60)).await;
    assert_eq!(outcome, ShutdownOutcome::Drained);
    assert_eq!(worker_thread_names(), HashSet::new(), "the shutdown joins its workers");
}

/// Names of this process's threads.
fn worker_thread_names() -> HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .filter(|name| name.starts_with("sluice-worker"))
                .collect()
        })
        .unwrap_or_default()
}
