//! Circuit breaking on connections: an upstream opens at most `max_connections` connections to
//! each of its servers, and at most `max_pending` requests per server may wait for one to free
//! up; a request past that is refused at once (503) instead of queueing behind an overloaded
//! server. Limits are per server so that idle pooled connections to one server never starve
//! another.
//!
//! The limit sits in the connector, so it counts what the pool really opens: a connection holds
//! its permit until the pool closes it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream's connection limits.
#[derive(Debug)]
pub(super) struct ConnectionLimits {
    open: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_pending: usize,
}

impl ConnectionLimits {
    /// At most `max_connections` open, and `max_pending` connects waiting for one to close.
    pub(super) fn new(max_connections: usize, max_pending: usize) -> Self {
        Self { open: Arc::new(Semaphore::new(max_connections)), waiting: AtomicUsize::new(0), max_pending }
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, ConnectionLimitReached> {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let admitted = self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
            (waiting < self.max_pending).then_some(waiting + 1)
        });
        if admitted.is_err() {
            return Err(ConnectionLimitReached);
        }
        let permit = self.open.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit.map_err(|_| ConnectionLimitReached)
    }
}

/// A connection could not be opened: the upstream is at its connection limit and its queue of
/// waiting requests is full.
#[derive(Debug, thiserror::Error)]
#[error("the upstream is at its connection limit and its queue of waiting requests is full")]
pub struct ConnectionLimitReached;

/// Each server's limits, by `host:port`.
pub(super) type ServerLimits = HashMap<String, Arc<ConnectionLimits>>;

/// A connector that opens connections only within each server's limits.
#[derive(Debug, Clone)]
pub struct LimitedConnector<C> {
    inner: C,
    limits: Option<Arc<ServerLimits>>,
}

impl<C> LimitedConnector<C> {
    /// Wraps `inner`; without limits it only passes connections through.
    pub(super) fn new(inner: C, limits: Option<Arc<ServerLimits>>) -> Self {
        Self { inner, limits }
    }
}

impl<C> Service<Uri> for LimitedConnector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Response: Send,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    type Response = LimitedConnection<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The service polled ready is the one to call; a fresh clone takes its place.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let limits = self
            .limits
            .as_ref()
            .and_then(|servers| uri.authority().and_then(|authority| servers.get(authority.as_str())).cloned());
        Box::pin(async move {
            let permit = match &limits {
                Some(limits) => Some(limits.permit().await?),
                None => None,
            };
            let stream = inner.call(uri).await.map_err(Into::into)?;
            Ok(LimitedConnection { inner: stream, _permit: permit })
        })
    }
}

/// A connection holding its place within the limit until it closes.
#[derive(Debug)]
pub struct LimitedConnection<T> {
    inner: T,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T: Connection> Connection for LimitedConnection<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl<T: Read + Unpin> Read for LimitedConnection<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for LimitedConnection<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
