//! The HTTP cache: one store for the whole process (it outlives reloads), bounded in bytes, on
//! moka. Entries are keyed by route and cache key (the key a filter set, or host and path with
//! query), hold every `Vary` variant of that key, and are kept past their freshness for as long
//! as they can still be served stale or revalidated. Concurrent misses for one key share one
//! origin request ([`HttpCache::join_fill`]); a response is stored once its whole body has
//! passed to the client ([`FillBody`]). Purges by key, key prefix or tag come from the admin API.
//!
//! The request flow that decides between hit, revalidation and origin lives in the pipeline;
//! the rules of RFC 9111 live in [`policy`].

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod entry;
pub mod policy;
pub mod range;
pub mod status;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

pub use entry::{Entry, Freshness, Variants};
pub use policy::Directives;
pub use status::CacheStatus;

use sluice_http::body::{BoxError, ProxyBody};
use sluice_http::compression::CompressionSettings;

/// Default size of the store.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A route's cache settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Lifetime of responses that may be stored but state none (zero: not stored).
    pub default_ttl: Duration,
    /// Largest body stored; larger responses pass through.
    pub max_object_bytes: usize,
    /// Stale-while-revalidate window when the origin gives none.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window when the origin gives none.
    pub stale_if_error: Duration,
    /// How long stale entries with a validator are kept for revalidation.
    pub keep_stale: Duration,
    /// Requests carrying any of these headers skip the cache.
    pub bypass_headers: Vec<HeaderName>,
    /// Requests carrying any of these cookies skip the cache.
    pub bypass_cookies: Vec<String>,
    /// The response header whose values tag an entry for purging.
    pub tag_header: HeaderName,
    /// How long a request waits for another one fetching the same key before going itself.
    pub lock_timeout: Duration,
    /// Targeted cache-control fields (RFC 9213) this cache obeys over `Cache-Control`, in order.
    pub targeted_fields: Vec<HeaderName>,
    /// Give responses without an explicit lifetime a heuristic one (RFC 9111 section 4.2.2).
    pub heuristics: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            default_ttl: Duration::ZERO,
            max_object_bytes: 8 * 1024 * 1024,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            keep_stale: Duration::from_secs(3600),
            bypass_headers: Vec::new(),
            bypass_cookies: Vec::new(),
            tag_header: HeaderName::from_static("cache-tag"),
            lock_timeout: Duration::from_secs(5),
            targeted_fields: vec![HeaderName::from_static("cdn-cache-control")],
            heuristics: true,
        }
    }
}

impl CacheSettings {
    /// Whether a request skips the cache by the route's bypass rules.
    pub fn bypassed_by(&self, request: &HeaderMap) -> bool {
        if self.bypass_headers.iter().any(|name| request.contains_key(name)) {
            return true;
        }
        !self.bypass_cookies.is_empty()
            && request
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim()))
                .any(|name| self.bypass_cookies.iter().any(|bypass| bypass == name))
    }
}

/// Where an entry lives: the route it was stored for and its cache key. Keys are separate per
/// route so that one tenant's filter cannot choose a key that serves another route's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    /// The route's name.
    pub route: Arc<str>,
    /// The cache key.
    pub key: Arc<str>,
}

/// The default cache key: host, path and query.
pub fn default_key(host: &str, path_and_query: &str) -> String {
    let mut key = String::with_capacity(host.len() + path_and_query.len());
    key.push_str(host);
    key.push_str(path_and_query);
    key
}

/// What to purge.
#[derive(Debug, Clone, Copy)]
pub enum PurgeTarget<'a> {
    /// One key exactly.
    Key(&'a str),
    /// Every key starting with this.
    Prefix(&'a str),
    /// Every entry carrying this tag.
    Tag(&'a str),
}

/// How a request takes part in filling a key.
pub enum Fill {
    /// It fetches; others wait for it until the guard is dropped.
    Leader(FillGuard),
    /// Another request is fetching; wait on this, then look again.
    Follower(watch::Receiver<()>),
}

/// Held by the request fetching a key; dropping it wakes the requests waiting for that key.
pub struct FillGuard {
    cache: Arc<HttpCache>,
    key: EntryKey,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Ok(mut fills) = self.cache.fills.lock() {
            fills.remove(&self.key);
        }
    }
}

/// What the cache holds, for its gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSize {
    /// Bytes of stored responses.
    pub bytes: u64,
    /// Keys held.
    pub keys: u64,
}

/// The process's HTTP cache.
pub struct HttpCache {
    entries: moka::sync::Cache<EntryKey, Arc<Variants>>,
    fills: Mutex<HashMap<EntryKey, watch::Receiver<()>>>,
    /// Bumped by every purge, so a fill that began before a purge does not store what was purged.
    purges: AtomicU64,
    /// The latest purges, so that a fill that saw others happen while it streamed is dropped
    /// only when one of them could have meant its key.
    recent_purges: Mutex<VecDeque<PurgeRecord>>,
    max_bytes: u64,
}

/// How many purges [`HttpCache`] remembers; a fill older than all of them is dropped.
const REMEMBERED_PURGES: usize = 512;

/// One purge, as [`FillBody`] checks it against the key it fills.
#[derive(Debug)]
struct PurgeRecord {
    generation: u64,
    route: Option<Arc<str>>,
    target: OwnedPurgeTarget,
}

#[derive(Debug)]
enum OwnedPurgeTarget {
    Key(Box<str>),
    Prefix(Box<str>),
    // A tag is only known from a response's headers: a fill whose own tags are not known when
    // the check runs is compared by them.
    Tag(Box<str>),
}

impl PurgeRecord {
    fn may_mean(&self, key: &EntryKey, tags: &[String]) -> bool {
        if self.route.as_ref().is_some_and(|route| *route != key.route) {
            return false;
        }
        match &self.target {
            OwnedPurgeTarget::Key(wanted) => **wanted == *key.key,
            OwnedPurgeTarget::Prefix(prefix) => key.key.starts_with(&**prefix),
            OwnedPurgeTarget::Tag(tag) => tags.iter().any(|own| **own == **tag),
        }
    }
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpCache")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

/// Keeps each key until its longest-kept variant may no longer be served or revalidated.
struct KeepWhileUseful;

impl moka::Expiry<EntryKey, Arc<Variants>> for KeepWhileUseful {
    fn expire_after_create(&self, _: &EntryKey, value: &Arc<Variants>, _: Instant) -> Option<Duration> {
        Some(value.retain_for)
    }

    fn expire_after_update(
        &self,
        _: &EntryKey,
        value: &Arc<Variants>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.retain_for)
    }
}

impl HttpCache {
    /// A store of at most `max_bytes` (bodies and headers).
    pub fn new(max_bytes: u64) -> Arc<Self> {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &EntryKey, variants: &Arc<Variants>| u32::try_from(variants.size).unwrap_or(u32::MAX))
            .expire_after(KeepWhileUseful)
            .build();
        Arc::new(Self {
            entries,
            fills: Mutex::new(HashMap::new()),
            purges: AtomicU64::new(0),
            recent_purges: Mutex::new(VecDeque::with_capacity(REMEMBERED_PURGES)),
            max_bytes,
        })
    }

    /// The store's bound in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Every variant stored under `key`.
    pub fn variants(&self, key: &EntryKey) -> Option<Arc<Variants>> {
        self.entries.get(key)
    }

    /// Joins the fetch of `key`: the first request leads, the others follow until it is done.
    pub fn join_fill(self: &Arc<Self>, key: &EntryKey) -> Fill {
        let mut fills = self.fills.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(done) = fills.get(key) {
            return Fill::Follower(done.clone());
        }
        let (sender, receiver) = watch::channel(());
        fills.insert(key.clone(), receiver);
        Fill::Leader(FillGuard { cache: self.clone(), key: key.clone(), _done: sender })
    }

    /// Stores `entry` under `key`, replacing the variant it matches.
    pub fn insert(&self, key: &EntryKey, entry: Arc<Entry>) {
        let now = Instant::now();
        self.entries.entry(key.clone()).and_compute_with(|existing| {
            let variants = match existing {
                Some(existing) => existing.value().with(entry, now),
                None => Variants::default().with(entry, now),
            };
            moka::ops::compute::Op::Put(Arc::new(variants))
        });
    }

    /// Removes one variant (it turned out not to be storable any more).
    pub fn remove(&self, key: &EntryKey, entry: &Arc<Entry>) {
        let now = Instant::now();
        self.entries.entry(key.clone()).and_compute_with(|existing| match existing {
            Some(existing) => {
                let left = existing.value().without(entry, now);
                if left.entries.is_empty() {
                    moka::ops::compute::Op::Remove
                } else {
                    moka::ops::compute::Op::Put(Arc::new(left))
                }
            }
            None => moka::ops::compute::Op::Nop,
        });
    }

    /// Removes what `target` names, on `route` only when given; returns how many keys went.
    pub fn purge(&self, target: PurgeTarget<'_>, route: Option<&str>) -> usize {
        {
            let mut recent = self.recent_purges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = self.purges.fetch_add(1, Ordering::SeqCst) + 1;
            if recent.len() == REMEMBERED_PURGES {
                recent.pop_front();
            }
            let target = match target {
                PurgeTarget::Key(key) => OwnedPurgeTarget::Key(key.into()),
                PurgeTarget::Prefix(prefix) => OwnedPurgeTarget::Prefix(prefix.into()),
                PurgeTarget::Tag(tag) => OwnedPurgeTarget::Tag(tag.into()),
            };
            recent.push_back(PurgeRecord { generation, route: route.map(Arc::from), target });
        }
        let doomed: Vec<Arc<EntryKey>> = self
            .entries
            .iter()
            .filter(|(key, variants)| {
                route.is_none_or(|route| *key.route == *route)
                    && match target {
                        PurgeTarget::Key(wanted) => *key.key == *wanted,
                        PurgeTarget::Prefix(prefix) => key.key.starts_with(prefix),
                        PurgeTarget::Tag(tag) => {
                            variants.entries.iter().any(|entry| entry.tags.iter().any(|t| t == tag))
                        }
                    }
            })
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            self.entries.invalidate(key.as_ref());
        }
        doomed.len()
    }

    /// What the store holds now, in bytes and keys (read when metrics are scraped).
    pub fn stored_size(&self) -> StoredSize {
        self.entries.run_pending_tasks();
        StoredSize { bytes: self.entries.weighted_size(), keys: self.entries.entry_count() }
    }

    /// The purge count now, to hand to [`FillBody`].
    pub fn purge_generation(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    /// Whether a purge after `generation` may have meant `key` (carrying `tags`): then what was
    /// fetched before it must not be stored. Purges of other keys leave the fill alone.
    pub fn purged_since(&self, generation: u64, key: &EntryKey, tags: &[String]) -> bool {
        if self.purges.load(Ordering::SeqCst) == generation {
            return false;
        }
        let recent = self.recent_purges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Purges older than the remembered ones are unknown: count them as meaning this key.
        if recent.front().is_none_or(|oldest| oldest.generation > generation + 1) {
            return true;
        }
        recent.iter().filter(|purge| purge.generation > generation).any(|purge| purge.may_mean(key, tags))
    }
}

/// What a miss needs to store the response that answers it.
pub struct FillTicket {
    /// The store.
    pub cache: Arc<HttpCache>,
    /// Where it goes.
    pub key: EntryKey,
    /// The route's settings.
    pub settings: Arc<CacheSettings>,
    /// The route's compression (for `Accept-Encoding` variants).
    pub compression: Option<Arc<CompressionSettings>>,
    /// The request's headers (for `Vary`).
    pub request_headers: HeaderMap,
    /// The request's cache directives.
    pub request_directives: Directives,
    /// When the request went to the origin.
    pub request_time: SystemTime,
    /// Wakes requests waiting for this key once dropped.
    pub guard: Option<FillGuard>,
    /// Purges seen when the fill began.
    pub purge_generation: u64,
}

impl FillTicket {
    /// The entry `response`'s head describes, when it may be stored, or why it may not.
    pub fn entry_for(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        response_time: SystemTime,
    ) -> Result<Entry, policy::NotStored> {
        let context = policy::StoreContext {
            method: &Method::GET,
            request: &self.request_directives,
            authorized: self.request_headers.contains_key(header::AUTHORIZATION),
            default_ttl: self.settings.default_ttl,
            targeted: &self.settings.targeted_fields,
            heuristics: self.settings.heuristics,
        };
        let storable = policy::storable(context, status, headers)?;
        // A 206 is stored only as one known part of a representation of known length.
        let part = match status {
            StatusCode::PARTIAL_CONTENT => Some(range::Part::of(headers).ok_or(policy::NotStored::Status)?),
            _ => None,
        };
        let mut stored_headers = headers.clone();
        for unshared in &storable.directives.unshared_fields {
            stored_headers.remove(unshared);
        }
        stored_headers.remove(header::AGE);
        stored_headers.remove(sluice_http::X_REQUEST_ID);
        stored_headers.remove(header::HeaderName::from_static("cache-status"));
        let vary = entry::vary_names(headers)
            .into_iter()
            .map(|name| {
                let value = entry::selecting_value(&name, &self.request_headers, self.compression.as_deref());
                (name, value)
            })
            .collect();
        let tags = headers
            .get_all(&self.settings.tag_header)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split([',', ' ']))
            .filter(|tag| !tag.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Entry {
            status,
            headers: stored_headers,
            body: Bytes::new(),
            stored_at: Instant::now(),
            initial_age: policy::initial_age(headers, self.request_time, response_time),
            lifetime: storable.lifetime,
            stale_while_revalidate: storable
                .directives
                .stale_while_revalidate
                .unwrap_or(self.settings.stale_while_revalidate),
            stale_if_error: storable.directives.stale_if_error.unwrap_or(self.settings.stale_if_error),
            keep_stale: self.settings.keep_stale,
            directives: storable.directives,
            vary,
            tags,
            part,
        })
    }

    /// Wraps `response` so that its body is stored as it streams to the client. Returns the
    /// response and whether it will be stored (or why not).
    pub fn store(self, response: Response<ProxyBody>) -> (Response<ProxyBody>, Result<(), policy::NotStored>) {
        let declared =
            response.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|length| length > self.settings.max_object_bytes) {
            return (response, Err(policy::NotStored::TooLarge));
        }
        match self.entry_for(response.status(), response.headers(), SystemTime::now()) {
            Ok(entry) => {
                let (parts, body) = response.into_parts();
                let expected = body.size_hint().exact();
                // A body known to be empty (a 204, a zero Content-Length) is never polled by
                // the client connection: store it now.
                if parts.status == StatusCode::NO_CONTENT || (expected == Some(0) && body.is_end_stream()) {
                    let mut pending = Some((self, entry));
                    FillBody::finish(&mut BytesMut::new(), &mut pending);
                    return (Response::from_parts(parts, body), Ok(()));
                }
                let fill = FillBody { inner: body, collected: BytesMut::new(), expected, pending: Some((self, entry)) };
                (Response::from_parts(parts, sluice_http::body::boxed(fill)), Ok(()))
            }
            Err(reason) => (response, Err(reason)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body passing to the client that is stored once it has all passed. A body
    /// that grows past the route's object limit, fails, or is abandoned is not stored.
    pub struct FillBody {
        #[pin]
        inner: ProxyBody,
        collected: BytesMut,
        // The body's declared length: a client connection stops reading once it has had that
        // many bytes, without waiting for the body to say it has ended.
        expected: Option<u64>,
        pending: Option<(FillTicket, Entry)>,
    }
}

impl FillBody {
    fn finish(collected: &mut BytesMut, pending: &mut Option<(FillTicket, Entry)>) {
        if let Some((ticket, mut entry)) = pending.take() {
            // A purge while the body streamed may have meant this very response; a part whose
            // body is not the length its Content-Range says is not what it claims to be.
            let whole_part = entry.part.is_none_or(|part| part.length == collected.len());
            if whole_part && !ticket.cache.purged_since(ticket.purge_generation, &ticket.key, &entry.tags) {
                entry.body = std::mem::take(collected).freeze();
                ticket.cache.insert(&ticket.key, Arc::new(entry));
            }
        }
    }
}

impl Body for FillBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let limit = this.pending.as_ref().map_or(0, |(ticket, _)| ticket.settings.max_object_bytes);
                    if this.collected.len() + data.len() > limit {
                        *this.pending = None;
                        *this.collected = BytesMut::new();
                    } else if this.pending.is_some() {
                        this.collected.extend_from_slice(data);
                        if *this.expected == Some(this.collected.len() as u64) {
                            Self::finish(this.collected, this.pending);
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => *this.pending = None,
            Poll::Ready(None) => Self::finish(this.collected, this.pending),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Report the end only after poll_frame has seen it, so the store happens.
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A stored part of a body followed by the rest of it from the origin: what a request for
    /// the whole gets when the cache held its first bytes.
    pub struct CompletedBody {
        stored: Option<Bytes>,
        #[pin]
        rest: ProxyBody,
    }
}

impl CompletedBody {
    /// `stored`, then `rest`.
    pub fn new(stored: Bytes, rest: ProxyBody) -> Self {
        Self { stored: Some(stored).filter(|stored| !stored.is_empty()), rest }
    }
}

impl Body for CompletedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(stored) = this.stored.take() {
            return Poll::Ready(Some(Ok(Frame::data(stored))));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.stored.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let stored = self.stored.as_ref().map_or(0, |stored| stored.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + stored);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + stored);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::BodyExt;

    fn ticket(cache: &Arc<HttpCache>, key: &str, max_object_bytes: usize) -> FillTicket {
        let settings = CacheSettings { max_object_bytes, ..CacheSettings::default() };
        FillTicket {
            cache: cache.clone(),
            key: EntryKey { route: Arc::from("r"), key: Arc::from(key) },
            settings: Arc::new(settings),
            compression: None,
            request_headers: HeaderMap::new(),
            request_directives: Directives::default(),
            request_time: SystemTime::now(),
            guard: None,
            purge_generation: cache.purge_generation(),
        }
    }

    fn cacheable(body: &'static str, tags: &str) -> Response<ProxyBody> {
        let mut response = Response::new(sluice_http::body::full(body));
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        response.headers_mut().insert("cache-tag", HeaderValue::from_str(tags).unwrap());
        response
    }

    async fn pass(cache: &Arc<HttpCache>, key: &str, body: &'static str, tags: &str) {
        let (response, stored) = ticket(cache, key, 1024).store(cacheable(body, tags));
        assert!(stored.is_ok());
        let _ = response.into_body().collect().await.unwrap();
    }

    fn stored_body(cache: &HttpCache, key: &str) -> Option<Bytes> {
        let key = EntryKey { route: Arc::from("r"), key: Arc::from(key) };
        cache.variants(&key).map(|variants| variants.entries[0].body.clone())
    }

    #[tokio::test]
    async fn bodies_are_stored_once_they_have_passed_and_purged_by_key_prefix_and_tag() {
        let cache = HttpCache::new(1 << 20);
        pass(&cache, "a.test/x", "one", "blue").await;
        pass(&cache, "a.test/y", "two", "red, green").await;
        pass(&cache, "b.test/z", "three", "green").await;
        assert_eq!(stored_body(&cache, "a.test/x").as_deref(), Some(&b"one"[..]));

        assert_eq!(cache.purge(PurgeTarget::Tag("green"), None), 2);
        assert!(stored_body(&cache, "a.test/y").is_none() && stored_body(&cache, "b.test/z").is_none());
        assert_eq!(cache.purge(PurgeTarget::Key("a.test/x"), Some("other-route")), 0);
        assert_eq!(cache.purge(PurgeTarget::Prefix("a.test/"), Some("r")), 1);
        assert!(stored_body(&cache, "a.test/x").is_none());
    }

    #[tokio::test]
    async fn oversized_abandoned_and_purged_fills_are_not_stored() {
        let cache = HttpCache::new(1 << 20);
        let (response, _) = ticket(&cache, "big", 2).store(cacheable("too long", ""));
        let _ = response.into_body().collect().await.unwrap();
        assert!(stored_body(&cache, "big").is_none());

        let (response, _) = ticket(&cache, "abandoned", 1024).store(cacheable("never read", ""));
        drop(response);
        assert!(stored_body(&cache, "abandoned").is_none());

        let (response, _) = ticket(&cache, "purged", 1024).store(cacheable("old", ""));
        cache.purge(PurgeTarget::Prefix(""), None);
        let _ = response.into_body().collect().await.unwrap();
        assert!(stored_body(&cache, "purged").is_none(), "purged while streaming");

        // Purges of other keys, prefixes, tags and routes while a body streams leave it stored.
        let (response, _) = ticket(&cache, "a.test/kept", 1024).store(cacheable("kept", "blue"));
        cache.purge(PurgeTarget::Key("a.test/other"), None);
        cache.purge(PurgeTarget::Prefix("b.test/"), None);
        cache.purge(PurgeTarget::Tag("red"), None);
        cache.purge(PurgeTarget::Key("a.test/kept"), Some("other-route"));
        let _ = response.into_body().collect().await.unwrap();
        assert_eq!(stored_body(&cache, "a.test/kept").as_deref(), Some(&b"kept"[..]));
        let (response, _) = ticket(&cache, "a.test/tagged", 1024).store(cacheable("tagged", "blue"));
        cache.purge(PurgeTarget::Tag("blue"), None);
        let _ = response.into_body().collect().await.unwrap();
        assert!(stored_body(&cache, "a.test/tagged").is_none(), "its tag was purged");

        // A fill older than every purge remembered is dropped: what it missed is unknown.
        let (response, _) = ticket(&cache, "a.test/old", 1024).store(cacheable("old", ""));
        for index in 0..=REMEMBERED_PURGES {
            cache.purge(PurgeTarget::Key(&format!("elsewhere/{index}")), None);
        }
        let _ = response.into_body().collect().await.unwrap();
        assert!(stored_body(&cache, "a.test/old").is_none());
    }

    #[test]
    fn empty_bodies_are_stored_without_being_read() {
        let cache = HttpCache::new(1 << 20);
        let mut no_content = cacheable("", "");
        *no_content.status_mut() = StatusCode::NO_CONTENT;
        let (_response, stored) = ticket(&cache, "204", 1024).store(no_content);
        assert!(stored.is_ok());
        assert_eq!(stored_body(&cache, "204").as_deref(), Some(&b""[..]), "stored before any poll");
        let (_response, _) = ticket(&cache, "empty", 1024).store(cacheable("", ""));
        assert!(stored_body(&cache, "empty").is_some());
    }

    #[tokio::test]
    async fn parts_are_stored_only_when_their_body_is_the_range_they_claim() {
        let cache = HttpCache::new(1 << 20);
        for (key, body) in [("short", "012"), ("exact", "01234")] {
            let mut part = cacheable(body, "");
            *part.status_mut() = StatusCode::PARTIAL_CONTENT;
            part.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 0-4/10"));
            let (response, stored) = ticket(&cache, key, 1024).store(part);
            assert!(stored.is_ok());
            let _ = response.into_body().collect().await.unwrap();
        }
        assert!(stored_body(&cache, "short").is_none(), "3 bytes claiming to be 5");
        assert_eq!(stored_body(&cache, "exact").as_deref(), Some(&b"01234"[..]));
    }

    #[test]
    fn one_leader_per_key() {
        let cache = HttpCache::new(1 << 20);
        let key = EntryKey { route: Arc::from("r"), key: Arc::from("k") };
        let Fill::Leader(guard) = cache.join_fill(&key) else { panic!("first is the leader") };
        let Fill::Follower(done) = cache.join_fill(&key) else { panic!("second follows") };
        assert!(done.has_changed().is_ok(), "the leader is still fetching");
        drop(guard);
        assert!(done.has_changed().is_err(), "followers see the leader finish");
        assert!(matches!(cache.join_fill(&key), Fill::Leader(_)));
    }

    #[test]
    fn bypass_rules_match_headers_and_cookies() {
        let settings = CacheSettings {
            bypass_headers: vec![HeaderName::from_static("x-debug")],
            bypass_cookies: vec!["session".into()],
            ..CacheSettings::default()
        };
        let mut request = HeaderMap::new();
        request.insert(header::COOKIE, HeaderValue::from_static("theme=dark; sessionid=1"));
        assert!(!settings.bypassed_by(&request));
        request.insert(header::COOKIE, HeaderValue::from_static("theme=dark; session=1"));
        assert!(settings.bypassed_by(&request));
        let mut debug = HeaderMap::new();
        debug.insert("x-debug", HeaderValue::from_static("1"));
        assert!(settings.bypassed_by(&debug));
    }
}
