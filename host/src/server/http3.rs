//! HTTP/3 beside a TLS listener: a QUIC endpoint (quinn with rustls, h3 over h3-quinn) on the
//! listener's port over UDP. It serves with the listener's own certificates through the same
//! resolver, so a certificate reload reaches the next QUIC handshake; TLS 1.3 and ALPN `h3` only,
//! without 0-RTT. Each request goes through the same pipeline as HTTP/1.1 and HTTP/2
//! ([`Proxy::handle_boxed`]); its body streams in from the QUIC stream and the response streams
//! back as DATA frames. Shutdown sends GOAWAY and lets the requests in flight finish.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Http3Settings, ServerSettings};
use crate::pipeline::{ConnectionInfo, Proxy};
use sluice_http::ConnectionActivity;
use sluice_http::body::{self, BoxError, ProxyBody};

/// HTTP/3's "no error" code, for connections Sluice closes on purpose.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The limits of one listener's HTTP/3 side, from its own settings and `[server]`'s.
#[derive(Debug, Clone)]
pub(super) struct QuicLimits {
    /// Request streams open at once per connection.
    pub(super) max_streams: u32,
    /// A connection with nothing to do for this long is closed (`idle_timeout`).
    pub(super) idle_timeout: Duration,
    /// Time for a request's head, and for a body-less request's end (`header_read_timeout`).
    pub(super) header_read_timeout: Duration,
    /// Largest request head (`max_header_bytes`).
    pub(super) max_header_bytes: u64,
    /// Flow-control window per stream: what one stream may have buffered in Sluice.
    pub(super) stream_window: u32,
    /// Past this many connections open, new clients must prove their address (Retry) first.
    pub(super) connections_before_retry: usize,
}

impl QuicLimits {
    pub(super) fn of(http3: &Http3Settings, server: &ServerSettings) -> Self {
        Self {
            max_streams: http3.max_streams,
            idle_timeout: server.idle_timeout,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes as u64,
            stream_window: 256 * 1024,
            connections_before_retry: server.max_connections / 2,
        }
    }
}

/// Binds the QUIC endpoint of a listener on `addr` (UDP) with `tls` and the listener's limits.
pub(super) fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    settings: &QuicLimits,
) -> io::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| io::Error::other(format!("the listener's TLS settings cannot serve QUIC: {err}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(settings.max_streams.into())
        // Clients open no unidirectional streams of their own beyond HTTP/3's control and QPACK
        // streams.
        .max_concurrent_uni_streams(3u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(settings.idle_timeout).unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::MAX)),
        ))
        // Bounds what one stream and one connection may have buffered in Sluice.
        .stream_receive_window(quinn::VarInt::from_u32(settings.stream_window))
        .receive_window(quinn::VarInt::from_u32(settings.stream_window.saturating_mul(4)));
    config.transport_config(Arc::new(transport));
    config.migration(true);
    quinn::Endpoint::server(config, addr)
}

/// What every QUIC connection of one listener shares.
pub(super) struct QuicListener {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) name: Arc<str>,
    pub(super) hsts: Option<http::HeaderValue>,
    pub(super) proxy: Proxy,
    pub(super) settings: QuicLimits,
    pub(super) connections: TaskTracker,
    pub(super) drain: CancellationToken,
    pub(super) close_now: CancellationToken,
    /// Connections per client address, shared with the TCP listeners (`max_connections_per_client`).
    pub(super) per_client: Arc<super::ClientConnections>,
    pub(super) per_client_limit: usize,
    /// The process's connection slots (`max_connections`), shared with the TCP listeners.
    pub(super) limit: Arc<tokio::sync::Semaphore>,
}

/// Accepts QUIC connections until shutdown, each served on a task of its own.
pub(super) async fn accept_loop(listener: QuicListener) {
    let listener = Arc::new(listener);
    loop {
        let incoming = tokio::select! {
            () = listener.drain.cancelled() => break,
            incoming = listener.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        // Under a flood of new connections, a client must first prove its address (Retry).
        if listener.connections.len() > listener.settings.connections_before_retry
            && !incoming.remote_address_validated()
        {
            let _ = incoming.retry();
            continue;
        }
        // Past max_connections a QUIC client is refused at once: unlike TCP there is no kernel
        // queue to leave it waiting in.
        let Ok(permit) = listener.limit.clone().try_acquire_owned() else {
            tracing::debug!(listener = %listener.name, peer = %incoming.remote_address(), "HTTP/3 connection refused: max_connections are open");
            incoming.refuse();
            continue;
        };
        let Some(slot) = listener.per_client.admit(incoming.remote_address().ip(), Some(listener.per_client_limit))
        else {
            tracing::debug!(listener = %listener.name, peer = %incoming.remote_address(), "HTTP/3 connection refused: the client holds its limit of connections");
            incoming.refuse();
            continue;
        };
        let listener = listener.clone();
        let connections = listener.connections.clone();
        connections.spawn(async move {
            if let Err(error) = serve_connection(incoming, &listener).await {
                tracing::debug!(listener = %listener.name, %error, "HTTP/3 connection ended");
            }
            drop(slot);
            drop(permit);
        });
    }
    // No new connections; those open finish their requests (GOAWAY) or are cut at the deadline.
    listener.endpoint.set_server_config(None);
}

async fn serve_connection(incoming: quinn::Incoming, listener: &QuicListener) -> Result<(), BoxError> {
    let peer = incoming.remote_address();
    let connection = tokio::select! {
        () = listener.drain.cancelled() => return Ok(()),
        connection = incoming => connection?,
    };
    let info = Arc::new(ConnectionInfo {
        peer,
        peer_header: http::HeaderValue::try_from(peer.ip().to_string()).expect("an address is a header value"),
        listener: listener.name.clone(),
        scheme: "https",
        client_identity: None,
        hsts: listener.hsts.clone(),
        redirect_to_https: None,
        alt_svc: None,
        activity: ConnectionActivity::new(),
    });
    let mut h3: h3::server::Connection<h3_quinn::Connection, Bytes> = h3::server::builder()
        .max_field_section_size(listener.settings.max_header_bytes)
        .build(h3_quinn::Connection::new(connection.clone()))
        .await?;
    let requests = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = listener.drain.cancelled() => {
                // GOAWAY: the requests already accepted finish, then the connection closes; the
                // client takes new requests elsewhere.
                h3.shutdown(0).await?;
                requests.close();
                tokio::select! {
                    () = requests.wait() => {}
                    () = listener.close_now.cancelled() => {}
                }
                connection.close(H3_NO_ERROR, b"");
                return Ok(());
            }
            () = listener.close_now.cancelled() => {
                connection.close(H3_NO_ERROR, b"shutting down");
                break;
            }
            accepted = h3.accept() => accepted,
        };
        match accepted {
            Ok(Some(resolver)) => {
                let proxy = listener.proxy.clone();
                let info = info.clone();
                let header_timeout = listener.settings.header_read_timeout;
                requests.spawn(async move {
                    if let Err(error) = serve_request(resolver, proxy, info, header_timeout).await {
                        tracing::debug!(%error, "HTTP/3 request stream ended early");
                    }
                });
            }
            Ok(None) => break,
            Err(error) if error.is_h3_no_error() => break,
            Err(error) => return Err(error.into()),
        }
    }
    requests.close();
    requests.wait().await;
    Ok(())
}

async fn serve_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    proxy: Proxy,
    info: Arc<ConnectionInfo>,
    header_timeout: Duration,
) -> Result<(), BoxError> {
    let (request, stream) = tokio::time::timeout(header_timeout, resolver.resolve_request()).await??;
    let (mut send, mut recv) = stream.split();
    let (parts, ()) = request.into_parts();
    let body = match parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
    {
        Some(0) => body::empty(),
        Some(length) => {
            body::boxed(QuicBody { stream: recv, first: None, exact: Some(length), received: 0, ended: false })
        }
        None => {
            // Without a declared length, the body is known empty only once the stream ends: a
            // GET's FIN comes with its headers, so waiting for it costs nothing there.
            match tokio::time::timeout(header_timeout, recv.recv_data()).await? {
                Ok(None) => body::empty(),
                Ok(Some(mut first)) => {
                    let first = first.copy_to_bytes(first.remaining());
                    body::boxed(QuicBody { stream: recv, first: Some(first), exact: None, received: 0, ended: false })
                }
                Err(error) => return Err(error.into()),
            }
        }
    };
    let response = proxy.handle_boxed(Request::from_parts(parts, body), info).await;
    send_response(&mut send, response).await
}

async fn send_response(send: &mut SendStream, response: Response<ProxyBody>) -> Result<(), BoxError> {
    let (mut parts, mut body) = response.into_parts();
    // Connection-specific fields have no meaning in HTTP/3 (RFC 9114 section 4.2).
    for name in [http::header::CONNECTION, http::header::TRANSFER_ENCODING, http::header::UPGRADE] {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    send.send_response(Response::from_parts(parts, ())).await?;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(fields) = frame.into_trailers() {
                    trailers = Some(fields);
                }
            }
        }
    }
    if let Some(trailers) = trailers {
        send.send_trailers(trailers).await?;
    }
    send.finish().await?;
    Ok(())
}

/// A request body read from its QUIC stream. With a declared `Content-Length`, a body that
/// runs past it or ends short fails rather than reach an HTTP/1.1 upstream framed wrongly (RFC
/// 9114 section 4.1.2: such a request is malformed).
struct QuicBody {
    stream: RecvStream,
    /// Data read already (to learn whether there was a body at all).
    first: Option<Bytes>,
    exact: Option<u64>,
    received: u64,
    ended: bool,
}

/// A request body that disagrees with its own `Content-Length`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is not the {declared} bytes its Content-Length declares")]
struct LengthMismatch {
    declared: u64,
}

impl Body for QuicBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match this.stream.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut data))) => {
                this.received += data.remaining() as u64;
                if let Some(declared) = this.exact.filter(|declared| this.received > *declared) {
                    this.ended = true;
                    return Poll::Ready(Some(Err(LengthMismatch { declared }.into())));
                }
                Poll::Ready(Some(Ok(Frame::data(data.copy_to_bytes(data.remaining())))))
            }
            Poll::Ready(Ok(None)) if this.exact.is_some_and(|declared| declared != this.received) => {
                this.ended = true;
                let declared = this.exact.unwrap_or_default();
                Poll::Ready(Some(Err(LengthMismatch { declared }.into())))
            }
            Poll::Ready(Ok(None)) => match this.stream.poll_recv_trailers(cx) {
                Poll::Ready(Ok(Some(trailers))) => {
                    this.ended = true;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Poll::Ready(Ok(None)) => {
                    this.ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error.into()))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
