//! What a client connection is doing: requests in flight and when it was last active, for the
//! idle timeout the server enforces and the requests the pipeline counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// In-flight requests and the last time the count changed, for the idle timeout.
#[derive(Debug)]
pub struct ConnectionActivity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Whether any request has started on the connection.
    served: AtomicBool,
    /// Milliseconds after `opened` at which the connection last had activity.
    last_active_ms: AtomicU64,
    /// Milliseconds after `opened` (at least 1) since which a response frame has been handed to
    /// the connection and the connection has not asked for the next: the client is not reading.
    /// 0 while nothing is owed.
    awaiting_client_since_ms: AtomicU64,
    /// Milliseconds after `opened` (at least 1) at which bytes of a request head arrived with no
    /// request in flight, until that request starts; 0 while no head is being read.
    head_since_ms: AtomicU64,
    /// The connection speaks HTTP/2, whose streams the head deadline does not apply to.
    multiplexed: AtomicBool,
}

/// Held while a request is in flight; dropping it marks the request done.
#[derive(Debug)]
pub struct InFlight(Arc<ConnectionActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionActivity {
    /// A connection opened now, with nothing in flight.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            awaiting_client_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
        })
    }

    /// Marks a request as started; it counts until the returned guard is dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.head_since_ms.store(0, Ordering::Release);
        self.touch();
        InFlight(self.clone())
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A response frame was handed to the connection: until it asks for the next one, it is
    /// waiting on the client to read.
    pub fn frame_handed_over(&self) {
        self.awaiting_client_since_ms.store(self.now_ms().max(1), Ordering::Release);
    }

    /// The connection asked for the next response frame (or the body ended): the client reads.
    pub fn frame_asked_for(&self) {
        self.awaiting_client_since_ms.store(0, Ordering::Release);
    }

    /// Resolves once the connection has waited `limit` for its client to read a response (a
    /// client that stops reading holds its connection, and the upstream's, only that long).
    pub async fn client_stops_reading(&self, limit: Duration) {
        self.held_for(&self.awaiting_client_since_ms, limit).await;
    }

    /// Bytes came in from the client. With no request in flight on an HTTP/1 connection they
    /// begin a request head, which from now on has the head deadline to be complete.
    pub fn bytes_arrived(&self) {
        if self.head_since_ms.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Acquire) == 0
            && !self.multiplexed.load(Ordering::Relaxed)
        {
            self.head_since_ms.store(self.now_ms().max(1), Ordering::Release);
        }
    }

    /// The connection turned out to speak HTTP/2: its requests are streams, each started as its
    /// headers complete, and no head deadline applies between them.
    pub fn speaks_http2(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Release);
    }

    /// Resolves once a request head has been arriving for `limit` without being complete (a
    /// slow-header client). One timer per connection, re-armed only when it runs out: reading a
    /// head costs no timer of its own.
    pub async fn head_stalls(&self, limit: Duration) {
        self.held_for(&self.head_since_ms, limit).await;
    }

    /// Resolves once the moment `since` holds (milliseconds after `opened`; 0 for none) is
    /// `limit` ago. While it holds none, the one timer is re-armed every `limit`.
    async fn held_for(&self, since: &AtomicU64, limit: Duration) {
        loop {
            let from = since.load(Ordering::Acquire);
            let next_check = if from == 0 {
                Instant::now() + limit
            } else {
                let started = self.opened + Duration::from_millis(from);
                if started.elapsed() >= limit {
                    return;
                }
                started + limit
            };
            tokio::time::sleep_until(next_check.into()).await;
        }
    }

    /// Resolves once nothing has been in flight for `idle`, or, before the first request has
    /// started, once the connection has been open for `first_request` (a client that connects and
    /// sends nothing holds its slot only that long).
    pub async fn idle_for(&self, idle: Duration, first_request: Duration) {
        loop {
            let last_active = self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            let idle = if self.served.load(Ordering::Acquire) { idle } else { first_request };
            if !busy && last_active.elapsed() >= idle {
                return;
            }
            let next_check = if busy { Instant::now() + idle } else { last_active + idle };
            tokio::time::sleep_until(next_check.into()).await;
        }
    }
}
