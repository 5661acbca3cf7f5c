//! One client connection: HTTP/1.1 or HTTP/2 (prior knowledge) served by hyper, with the
//! deadlines (idle, request head, client reading) and graceful shutdown that Sluice keeps per
//! connection rather than per request.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;

use sluice_http::ConnectionActivity;

use crate::config::ServerSettings;
use crate::pipeline::{ConnectionInfo, Proxy};

/// hyper's connection builder with Sluice's limits applied; built once per listener.
pub(super) fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The head deadline is the connection watcher's (`ConnectionActivity::head_stalls`), not a
    // timer hyper would arm and box for every request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes)
        .max_headers(settings.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// How long a client connection may sit without a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionTimeouts {
    /// With nothing in flight, after a request (`idle_timeout`).
    pub(super) idle: Duration,
    /// From accept to the first request's complete head, and from a later head's first byte to
    /// its end (`header_read_timeout`).
    pub(super) first_request: Duration,
    /// After an idle connection was asked to close, before it is cut off.
    pub(super) close_grace: Duration,
    /// Waiting for the client to read a response (`send_timeout`), before it is cut off.
    pub(super) send: Duration,
}

impl ConnectionTimeouts {
    pub(super) fn of(settings: &ServerSettings) -> Self {
        Self {
            idle: settings.idle_timeout,
            first_request: settings.header_read_timeout,
            close_grace: settings.header_read_timeout,
            send: settings.send_timeout,
        }
    }
}

/// Serves `stream` until the client closes, it idles out, or shutdown drains it; `close_now`
/// cuts it off without draining.
pub(super) async fn serve<I>(
    stream: I,
    builder: auto::Builder<TokioExecutor>,
    proxy: Proxy,
    info: ConnectionInfo,
    limits: ConnectionTimeouts,
    drain: CancellationToken,
    close_now: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = info.activity.clone();
    let info = Arc::new(info);
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, info).await) }
    });
    let stream = ObservedStream { inner: stream, activity: activity.clone(), first_read: true };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut draining = false;
    // Once an idle connection has been asked to close, it gets this long to do so: a client that
    // keeps it open (a half-sent HTTP/2 header block, say) is cut off.
    let mut idle_close_by: Option<tokio::time::Instant> = None;
    loop {
        let cut_off = async {
            match idle_close_by {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "client connection ended with an error");
                }
                return;
            }
            () = drain.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = activity.idle_for(limits.idle, limits.first_request), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
                idle_close_by = Some(tokio::time::Instant::now() + limits.close_grace);
            }
            () = activity.head_stalls(limits.first_request) => {
                tracing::debug!("client too slow with its request head: cut off");
                return;
            }
            () = activity.client_stops_reading(limits.send) => {
                tracing::debug!("client stopped reading its response: cut off");
                return;
            }
            () = cut_off => {
                tracing::debug!("idle client connection did not close when asked: cut off");
                return;
            }
            () = close_now.cancelled() => return,
        }
    }
}

/// The client's stream, telling the connection's activity when request bytes arrive (for the
/// head deadline) and whether the client speaks HTTP/2.
struct ObservedStream<I> {
    inner: I,
    activity: Arc<ConnectionActivity>,
    first_read: bool,
}

/// What an HTTP/2 client with prior knowledge sends first.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<I: AsyncRead + Unpin> AsyncRead for ObservedStream<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let arrived = &buf.filled()[before..];
        if matches!(polled, Poll::Ready(Ok(()))) && !arrived.is_empty() {
            if self.first_read {
                self.first_read = false;
                let compared = arrived.len().min(HTTP2_PREFACE.len());
                if arrived[..compared] == HTTP2_PREFACE[..compared] {
                    self.activity.speaks_http2();
                }
            }
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ObservedStream<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl ConnectionInfo {
    /// Connection facts for a newly accepted plain-HTTP client.
    pub(super) fn accepted(peer: std::net::SocketAddr, listener: Arc<str>) -> Self {
        let peer_header = http::HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Self {
            peer,
            peer_header,
            listener,
            scheme: "http",
            client_identity: None,
            hsts: None,
            alt_svc: None,
            redirect_to_https: None,
            activity: ConnectionActivity::new(),
        }
    }
}
