//! Sluice's own HTTP/1.1 client for cleartext upstreams: the request's task owns the socket for
//! the whole exchange. It writes the head (and a body that is ready at once) in one write, reads
//! the response head with httparse into the connection's one read buffer, and hands the body
//! out as a [`ResponseBody`] that puts the connection back into its worker's pool when the body
//! ends. hyper's client sends each request through a channel to a connection task and the
//! answer back through another, and checks connections out of a pool shared by every thread;
//! this does neither (docs/benchmarks.md has the figures that chose it).
//!
//! It carries ordinary requests. Protocol switches (`Upgrade`, `CONNECT`), upstreams with a
//! connection limit, TLS and HTTP/2 upstreams stay on hyper's client, as do health checks.

mod decode;
mod encode;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::dns::DnsResolver;
use decode::{BodyDecoder, Decoded, Framing, ResponseHead};
use encode::RequestFraming;
use sluice_http::body::{BoxError, ProxyBody};

/// What a read asks the kernel for at least.
const READ_CHUNK: usize = 16 * 1024;

/// The most one read of a response body asks for: a large body takes few system calls, and no
/// connection holds more than this much unsent.
const MAX_READ: usize = 256 * 1024;

/// Body frames up to this size are copied behind the head or chunk framing, for one write.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Why an exchange with a server failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// Connecting took longer than the pool's `connect_timeout`.
    #[error("connect timed out after {0} ms")]
    ConnectTimeout(u128),
    /// The client's request body failed while it was being sent.
    #[error("error reading the request body: {0}")]
    ClientBody(#[source] BoxError),
    /// The connection failed while the request or response was on it.
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    /// The server closed the connection before any of its answer arrived.
    #[error("the server closed the connection before answering")]
    Closed,
    /// The server's answer broke HTTP/1.1, or the request body did not match its length.
    #[error("{0}")]
    Protocol(&'static str),
}

impl H1Error {
    /// Whether no connection could be made at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout(_))
    }
}

/// One connection: the socket, its read buffer (bytes read and not yet consumed), and the
/// buffer requests are written from.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

/// A connection waiting in the pool, since when.
#[derive(Debug)]
struct Idle {
    connection: Connection,
    since: Instant,
}

/// The idle connections of each server of one upstream, in one worker. Only that worker's
/// thread touches them (its requests and its reaper task), so their locks are never contended.
#[derive(Debug)]
struct Pool {
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task that closes idled-out and server-closed connections runs.
    reaping: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// The most recently used connection to `server` that is still open, if any.
    fn checkout(&self, server: usize) -> Option<Connection> {
        let mut idle = self.idle.get(server)?.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(Idle { mut connection, since }) = idle.pop_back() {
            if since.elapsed() >= self.idle_timeout {
                // Everything older has idled out too.
                idle.clear();
                return None;
            }
            if still_open(&mut connection) {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for the next request to `server`, dropping the oldest past the limit.
    fn put(self: &Arc<Self>, server: usize, connection: Connection) {
        self.start_reaping();
        let Some(idle) = self.idle.get(server) else { return };
        let mut idle = idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.max_idle == 0 {
            return;
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { connection, since: Instant::now() });
    }
}

impl Pool {
    /// Starts, once, the task that closes connections that idled out or that the server closed,
    /// so they do not wait in `CLOSE_WAIT` for the next request to their server. It runs on the
    /// runtime of the first connection returned (the pool's worker) and ends with the pool.
    fn start_reaping(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.reaping.load(Ordering::Relaxed) || self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap();
            }
        });
    }

    /// Closes the connections that idled out or that the server closed.
    fn reap(&self) {
        for idle in &self.idle {
            let mut idle = idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.retain_mut(|entry| entry.since.elapsed() < self.idle_timeout && still_open(&mut entry.connection));
        }
    }
}

/// Whether an idle connection can carry a request: the server has not closed it, and has sent
/// nothing unasked. The check reads the socket only when the reactor saw it become readable, so
/// the usual case costs no system call.
fn still_open(connection: &mut Connection) -> bool {
    let mut context = Context::from_waker(Waker::noop());
    match connection.stream.poll_read_ready(&mut context) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(connection.stream.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// The client of one upstream in one worker.
#[derive(Debug, Clone)]
pub struct H1Client {
    pool: Arc<Pool>,
    resolver: DnsResolver,
    connect_timeout: Duration,
}

/// How an exchange failed, and whether the server can have seen nothing of the request's answer
/// (a pooled connection it had closed): such a request may go again on a new connection.
struct Failure {
    error: H1Error,
    nothing_received: bool,
}

impl From<H1Error> for Failure {
    fn from(error: H1Error) -> Self {
        Self { error, nothing_received: false }
    }
}

impl H1Client {
    /// A client for an upstream of `servers` servers, with the pool's settings.
    pub fn new(servers: usize, pool: &crate::PoolSettings, resolver: DnsResolver) -> Self {
        let idle = (0..servers).map(|_| Mutex::new(VecDeque::new())).collect();
        Self {
            pool: Arc::new(Pool {
                idle,
                max_idle: pool.max_idle_per_server,
                idle_timeout: pool.idle_timeout,
                reaping: std::sync::atomic::AtomicBool::new(false),
            }),
            resolver,
            connect_timeout: pool.connect_timeout,
        }
    }

    /// Sends `request` (its URI names the server, `server` is its index in the upstream) and
    /// returns the response head with its body streaming from the connection.
    pub async fn send(&self, server: usize, request: Request<ProxyBody>) -> Result<Response<ResponseBody>, H1Error> {
        let (parts, mut body) = request.into_parts();
        let authority = parts.uri.authority().cloned().ok_or(H1Error::Protocol("request URI without a server"))?;
        let path = parts.uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
        let framing = encode::request_framing(&parts.method, &parts.headers, body.size_hint().exact());
        // A pooled connection the server closed as this request was being sent fails it before
        // any answer: with nothing in the body to lose and a method that may be repeated, it
        // goes again on a new connection.
        let may_repeat = body.is_end_stream() && parts.method.is_idempotent();
        let mut pooled = self.pool.checkout(server);
        loop {
            let reused = pooled.is_some();
            let mut connection = match pooled.take() {
                Some(connection) => connection,
                // Connecting (name resolution included) is a large future that most requests
                // never run: it lives on the heap while it does.
                None => Box::pin(self.connect(&authority)).await?,
            };
            connection.write.clear();
            encode::encode_head(&mut connection.write, &parts.method, path, &parts.headers, &authority, framing);
            match exchange(&mut connection, &mut body, framing, &parts.method).await {
                Ok((head, framing, reusable)) => {
                    return Ok(ResponseBody::respond(connection, head, framing, reusable, (self.pool.clone(), server)));
                }
                Err(failure) if reused && may_repeat && failure.nothing_received => {
                    tracing::debug!(error = %failure.error, "pooled connection was closed by the server: sending again");
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Connection, H1Error> {
        let port = authority.port_u16().unwrap_or(80);
        let connecting = self.resolver.connect(authority.host(), port);
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| H1Error::ConnectTimeout(self.connect_timeout.as_millis()))?
            .map_err(H1Error::Connect)?;
        stream.set_nodelay(true).map_err(H1Error::Connect)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(Connection { stream, read: BytesMut::with_capacity(READ_CHUNK), write: Vec::with_capacity(1024) })
    }
}

/// Writes the request (its head is in `connection.write` already) and reads the response head.
///
/// While a body streams, the server may answer before it has read all of it (a 413, say) and
/// stop reading: sending stops as soon as the server speaks, its answer is read and returned, and
/// the connection is not used again.
async fn exchange(
    connection: &mut Connection,
    body: &mut ProxyBody,
    framing: RequestFraming,
    method: &Method,
) -> Result<(ResponseHead, Framing, bool), Failure> {
    let mut sent = 0u64;
    let mut ended = framing == RequestFraming::Empty || body.is_end_stream();
    // What a write sends: `connection.write`, then a large data frame as it came, then this.
    let mut suffix = Vec::new();
    let mut after = None;
    if ended {
        finish_body(&mut connection.write, framing, sent, None)?;
    } else {
        // A body frame that is ready now (a buffered body) goes in the head's write.
        let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        let added;
        (added, after) = add_frame(&mut connection.write, &mut suffix, first, framing, &mut sent)?;
        let end_goes_to = if after.is_some() { &mut suffix } else { &mut connection.write };
        ended = end_if_done(end_goes_to, added, body, framing, sent)?;
    }
    let mut sending = send(connection, after.take(), &mut suffix).await;
    while !ended && matches!(sending, Sending::Sent) {
        let (reader, _) = connection.stream.split();
        let frame = tokio::select! {
            biased;
            frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)) => frame,
            () = server_speaks(reader, &mut connection.read) => {
                sending = Sending::Interrupted;
                break;
            }
        };
        let added;
        (added, after) = add_frame(&mut connection.write, &mut suffix, Poll::Ready(frame), framing, &mut sent)?;
        let end_goes_to = if after.is_some() { &mut suffix } else { &mut connection.write };
        ended = end_if_done(end_goes_to, added, body, framing, sent)?;
        sending = send(connection, after.take(), &mut suffix).await;
    }
    match read_head(connection, method).await {
        Ok((head, framing, reusable)) => Ok((head, framing, reusable && matches!(sending, Sending::Sent))),
        Err(failure) => match sending {
            Sending::Failed(error) => {
                Err(Failure { error: H1Error::Io(error), nothing_received: failure.nothing_received })
            }
            _ => Err(failure),
        },
    }
}

/// How sending (part of) a request went.
#[derive(Debug)]
enum Sending {
    /// All of it is written.
    Sent,
    /// The server spoke first: the rest is not sent.
    Interrupted,
    /// The connection failed.
    Failed(io::Error),
}

/// Writes `connection.write`, then `after`, then `suffix`, unless the server speaks first;
/// both buffers are empty afterwards.
async fn send(connection: &mut Connection, after: Option<Bytes>, suffix: &mut Vec<u8>) -> Sending {
    let (reader, mut writer) = connection.stream.split();
    let prefix = &connection.write;
    let writing = async {
        writer.write_all(prefix).await?;
        if let Some(data) = after {
            writer.write_all(&data).await?;
        }
        writer.write_all(suffix).await
    };
    let sending = tokio::select! {
        biased;
        written = writing => match written {
            Ok(()) => Sending::Sent,
            Err(error) => Sending::Failed(error),
        },
        () = server_speaks(reader, &mut connection.read) => Sending::Interrupted,
    };
    connection.write.clear();
    suffix.clear();
    sending
}

/// Resolves once the server has sent something (or closed) while the request is still going
/// out; what it sent is in `read`. Readiness the reactor reports without data waiting is
/// passed over.
async fn server_speaks(reader: tokio::net::tcp::ReadHalf<'_>, read: &mut BytesMut) {
    loop {
        if reader.readable().await.is_err() {
            return;
        }
        read.reserve(READ_CHUNK);
        match reader.try_read_buf(read) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            _ => return,
        }
    }
}

/// What adding one body frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    /// Data (or nothing yet): more may follow.
    More,
    /// The body ended; its end is still to be written.
    End,
    /// Trailers ended the body and were written with the last chunk.
    Finished,
}

/// Whether the body is over after `added`, writing its end when it is.
fn end_if_done(
    out: &mut Vec<u8>,
    added: Added,
    body: &ProxyBody,
    framing: RequestFraming,
    sent: u64,
) -> Result<bool, Failure> {
    match added {
        Added::Finished => Ok(true),
        Added::End => finish_body(out, framing, sent, None).map(|()| true).map_err(Failure::from),
        Added::More if body.is_end_stream() => {
            finish_body(out, framing, sent, None).map(|()| true).map_err(Failure::from)
        }
        Added::More => Ok(false),
    }
}

/// Frames one polled body frame into `out`; a large data frame is returned instead, to be
/// written after `out` without a copy (its chunk framing, when chunked, goes around it: the size
/// line in `out`, the closing CRLF in `suffix`).
fn add_frame(
    out: &mut Vec<u8>,
    suffix: &mut Vec<u8>,
    frame: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
    framing: RequestFraming,
    sent: &mut u64,
) -> Result<(Added, Option<Bytes>), Failure> {
    let frame = match frame {
        Poll::Pending => return Ok((Added::More, None)),
        Poll::Ready(None) => return Ok((Added::End, None)),
        Poll::Ready(Some(Err(error))) => return Err(H1Error::ClientBody(error).into()),
        Poll::Ready(Some(Ok(frame))) => frame,
    };
    let data = match frame.into_data() {
        Ok(data) => data,
        Err(frame) => {
            return match (frame.into_trailers(), framing) {
                (Ok(trailers), RequestFraming::Chunked { .. }) => {
                    finish_body(out, framing, *sent, Some(&trailers))?;
                    Ok((Added::Finished, None))
                }
                // Trailers cannot travel without chunks: the body ends without them.
                (Ok(_), _) => Ok((Added::End, None)),
                (Err(_), _) => Ok((Added::More, None)),
            };
        }
    };
    *sent += data.len() as u64;
    match framing {
        RequestFraming::Length { length, .. } if *sent > length => {
            Err(H1Error::Protocol("the request body is longer than its content-length").into())
        }
        _ if data.is_empty() => Ok((Added::More, None)),
        RequestFraming::Chunked { .. } if data.len() <= COALESCE_LIMIT => {
            encode::encode_chunk(out, &data);
            Ok((Added::More, None))
        }
        RequestFraming::Chunked { .. } => {
            let _ = std::io::Write::write_fmt(out, format_args!("{:x}\r\n", data.len()));
            suffix.extend_from_slice(b"\r\n");
            Ok((Added::More, Some(data)))
        }
        _ if data.len() <= COALESCE_LIMIT => {
            out.extend_from_slice(&data);
            Ok((Added::More, None))
        }
        _ => Ok((Added::More, Some(data))),
    }
}

/// Ends the body: the last chunk (with `trailers`), or a check that the length was met.
fn finish_body(
    out: &mut Vec<u8>,
    framing: RequestFraming,
    sent: u64,
    trailers: Option<&http::HeaderMap>,
) -> Result<(), H1Error> {
    match framing {
        RequestFraming::Chunked { .. } => {
            encode::encode_last_chunk(out, trailers);
            Ok(())
        }
        RequestFraming::Length { length, .. } if sent < length => {
            Err(H1Error::Protocol("the request body is shorter than its content-length"))
        }
        _ => Ok(()),
    }
}

/// Reads until a final response head (interim 1xx answers other than 101 are passed over).
async fn read_head(connection: &mut Connection, method: &Method) -> Result<(ResponseHead, Framing, bool), Failure> {
    let mut received = !connection.read.is_empty();
    loop {
        if !connection.read.is_empty()
            && let Some(mut head) = decode::parse_head(&mut connection.read)?
        {
            let status = head.status.as_u16();
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let (framing, reusable) = decode::framing(&mut head, method)?;
            return Ok((head, framing, reusable && status != 101));
        }
        if connection.read.capacity() - connection.read.len() < READ_CHUNK / 4 {
            connection.read.reserve(READ_CHUNK);
        }
        let read =
            poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut connection.stream), cx, &mut connection.read))
                .await;
        match read {
            Ok(0) if received => return Err(H1Error::Protocol("the server closed the connection mid-head").into()),
            Ok(0) => return Err(Failure { error: H1Error::Closed, nothing_received: true }),
            Ok(_) => received = true,
            Err(error) => return Err(Failure { error: H1Error::Io(error), nothing_received: !received }),
        }
    }
}

/// A response body read from its connection; once it ends the connection goes back to its
/// worker's pool (when the server allows another request on it), and if it is dropped before,
/// the connection closes.
#[derive(Debug)]
pub struct ResponseBody {
    connection: Option<Connection>,
    decoder: BodyDecoder,
    reusable: bool,
    home: (Arc<Pool>, usize),
    /// Room asked for before each read.
    read_size: usize,
}

impl ResponseBody {
    fn respond(
        connection: Connection,
        head: ResponseHead,
        framing: Framing,
        reusable: bool,
        home: (Arc<Pool>, usize),
    ) -> Response<Self> {
        let mut body = Self {
            connection: Some(connection),
            decoder: BodyDecoder::new(framing),
            reusable,
            home,
            read_size: READ_CHUNK,
        };
        if body.decoder.is_done() {
            body.release();
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        response
    }

    /// The body has ended: the connection goes back to the pool if it can carry another request.
    fn release(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.reusable
            && connection.read.is_empty()
        {
            self.home.0.put(self.home.1, connection);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
            let decoded = match this.decoder.decode(&mut connection.read) {
                Ok(decoded) => decoded,
                Err(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(error)));
                }
            };
            match decoded {
                Decoded::Data(data) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(trailers) => {
                    this.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Decoded::End => {
                    this.release();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            // A body of known length is asked for whole (up to the most one read takes); other
            // framings grow their reads while they keep filling them.
            let wanted = this.decoder.remaining().map_or(this.read_size, |remaining| {
                usize::try_from(remaining).unwrap_or(usize::MAX).clamp(READ_CHUNK / 4, MAX_READ)
            });
            if connection.read.capacity() - connection.read.len() < wanted {
                connection.read.reserve(wanted);
            }
            let room = connection.read.capacity() - connection.read.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut connection.stream), cx, &mut connection.read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(read)) if read > 0 && read == room => {
                    this.read_size = (this.read_size * 2).min(MAX_READ);
                }
                Poll::Ready(Ok(0)) => {
                    // The connection ended: the end of an until-close body, or a body cut short.
                    this.connection = None;
                    return match this.decoder.at_eof() {
                        Ok(_) => Poll::Ready(None),
                        Err(error) => Poll::Ready(Some(Err(error))),
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(H1Error::Io(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
