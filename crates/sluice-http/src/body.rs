//! The body types that flow through the proxy.
//!
//! Bodies are streamed: every type here passes frames on as they come and holds at most one
//! frame. Both directions use one boxed type so that forwarded, local and error bodies mix freely.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response Sluice handles.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A body with nothing in it.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The body grew past the limit a route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// The client's request body broke off: bad framing (an invalid chunk), or the client went away
/// mid-upload. It is the client's failure, never the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body broke off: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// Whether `error`, or any error it was caused by, is the client's body failing
/// ([`ClientBodyError`] or [`BodyTooLarge`]): a request that failed so says nothing about the
/// upstream.
pub fn caused_by_client_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<ClientBodyError>() || error.is::<BodyTooLarge>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The client's request body: fails once more than `limit` bytes have passed, and records that
/// it did so that the pipeline can answer 413 rather than a generic upstream error; the client's
/// own failures come out as [`ClientBodyError`].
pub struct LimitedBody<B> {
    inner: B,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` is set when the limit is passed.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Self { inner, limit, seen: 0, exceeded }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(ClientBodyError(err.into()).into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if this.seen > this.limit {
                this.exceeded.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BodyTooLarge { limit: this.limit }.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes it passes and calls `on_end` exactly once: when the
/// last frame has gone, when it fails (with the error), or when the client goes away and it is
/// dropped.
///
/// With a connection's [`ConnectionActivity`](crate::ConnectionActivity), it also tells the
/// connection when a frame is handed over and when the next is asked for, so that a client that
/// stops reading can be cut off.
pub struct ObservedBody<F: FnOnce(BodyOutcome, Option<&BoxError>)> {
    inner: ProxyBody,
    bytes: u64,
    on_end: Option<F>,
    activity: Option<Arc<crate::ConnectionActivity>>,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy)]
pub struct BodyOutcome {
    /// Body bytes sent.
    pub bytes: u64,
    /// Whether it ended normally.
    pub complete: bool,
}

impl<F: FnOnce(BodyOutcome, Option<&BoxError>)> ObservedBody<F> {
    /// Wraps `inner`.
    pub fn new(inner: ProxyBody, on_end: F) -> Self {
        Self { inner, bytes: 0, on_end: Some(on_end), activity: None }
    }

    /// Also reports to `activity` whether the client is reading (see
    /// [`ConnectionActivity::client_stops_reading`](crate::ConnectionActivity::client_stops_reading)).
    pub fn reporting_to(mut self, activity: Arc<crate::ConnectionActivity>) -> Self {
        self.activity = Some(activity);
        self
    }

    fn finish(&mut self, complete: bool, error: Option<&BoxError>) {
        if let Some(activity) = &self.activity {
            activity.frame_asked_for();
        }
        if let Some(on_end) = self.on_end.take() {
            on_end(BodyOutcome { bytes: self.bytes, complete }, error);
        }
    }
}

impl<F: FnOnce(BodyOutcome, Option<&BoxError>) + Unpin> Body for ObservedBody<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(activity) = &this.activity {
            activity.frame_asked_for();
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true, None);
                } else if let Some(activity) = &this.activity {
                    activity.frame_handed_over();
                }
            }
            Poll::Ready(Some(Err(error))) => this.finish(false, Some(error)),
            Poll::Ready(None) => this.finish(true, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(BodyOutcome, Option<&BoxError>)> Drop for ObservedBody<F> {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn limited_body_fails_past_limit_and_says_so() {
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(Full::new(Bytes::from(vec![0u8; 11])), 10, exceeded.clone());
        assert!(body.collect().await.is_err());
        assert!(exceeded.load(Ordering::Relaxed));

        let exceeded = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(Full::new(Bytes::from(vec![0u8; 10])), 10, exceeded.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!exceeded.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn observed_body_reports_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let body = ObservedBody::new(full("hello"), move |outcome, _| record.lock().unwrap().push(outcome));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].bytes, 5);
        assert!(seen[0].complete);
    }

    #[tokio::test]
    async fn a_broken_client_body_is_the_clients_failure() {
        struct Broken;
        impl Body for Broken {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Ready(Some(Err(std::io::Error::other("invalid chunk size"))))
            }
        }
        let body = LimitedBody::new(Broken, 10, Arc::new(AtomicBool::new(false)));
        let error = body.collect().await.unwrap_err();
        assert!(caused_by_client_body(&*error));
        // Also when wrapped, as an HTTP client wraps the body error of a request it sends.
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct SendFailed(#[source] BoxError);
        assert!(caused_by_client_body(&SendFailed(error)));
        assert!(!caused_by_client_body(&std::io::Error::other("connection reset")));
    }
}
