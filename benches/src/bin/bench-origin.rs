//! The origin behind every proxy in the load harness: HTTP/1.1 with keep-alive, answering
//! `/small` with 100 bytes and `/large` with 64 KiB, from memory, doing as little as it can so
//! that the proxy in front of it is what the figures measure.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves fixed bodies for the load harness.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks one; the chosen address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // One thread: the harness pins the origin to its own CPU.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(args.listen))
}

async fn serve(address: SocketAddr) -> std::io::Result<()> {
    let small = Bytes::from(vec![b's'; 100]);
    let large = Bytes::from(vec![b'l'; 64 * 1024]);
    let listener = TcpListener::bind(address).await?;
    // The harness reads this line to learn the port.
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = if request.uri().path() == "/large" { large.clone() } else { small.clone() };
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
