//! A stored response and the variants of one key: what was stored, when, for how long it is
//! fresh, which request headers select it (`Vary`), and how it is served again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::policy::{self, Directives};
use super::range::{self, Part, RangeAnswer};
use sluice_http::body::{self, ProxyBody};
use sluice_http::compression::{self, CompressionSettings};

/// Most variants kept under one key; past it the oldest goes.
const MOST_VARIANTS: usize = 16;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    /// Its status.
    pub status: StatusCode,
    /// Its headers as the client gets them, less per-request ones.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// When it was stored.
    pub stored_at: Instant,
    /// Its age when it arrived.
    pub initial_age: Duration,
    /// How long it is fresh.
    pub lifetime: Duration,
    /// What the response's `Cache-Control` said.
    pub directives: Directives,
    /// Serve stale while refreshing in the background, this long past its lifetime.
    pub stale_while_revalidate: Duration,
    /// Serve stale when the origin fails, this long past its lifetime.
    pub stale_if_error: Duration,
    /// Kept this long past its lifetime so it can be revalidated.
    pub keep_stale: Duration,
    /// The request headers that select it (`Vary`) and their normalised values.
    pub vary: Vec<(HeaderName, Option<String>)>,
    /// Purge tags from the route's tag header.
    pub tags: Vec<String>,
    /// For a stored `206`: which part of the representation its body is. It answers only the
    /// ranges inside it, and is never revalidated or served whole.
    pub part: Option<Part>,
}

/// How a stored response stands against a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it.
    Fresh,
    /// Serve it now and refresh it in the background.
    StaleWhileRevalidate,
    /// Ask the origin first (conditionally when there is a validator).
    Stale,
}

impl Entry {
    /// Its age now.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Seconds of freshness left; negative once stale (`Cache-Status` `ttl`).
    pub fn ttl_seconds(&self, now: Instant) -> i64 {
        let age = self.age(now).as_secs() as i64;
        self.lifetime.as_secs() as i64 - age
    }

    /// Whether it may be served for a request with `request` directives.
    pub fn freshness(&self, now: Instant, request: &Directives) -> Freshness {
        let age = self.age(now);
        if !self.directives.no_cache && policy::fresh_enough(age, self.lifetime, request) {
            return Freshness::Fresh;
        }
        // Past its own lifetime but within the grace the origin allowed; a client that asked for
        // something fresher (no-cache, max-age, min-fresh) is not served stale.
        let in_grace = age >= self.lifetime && age < self.lifetime + self.stale_while_revalidate;
        let client_strict = request.no_cache || request.max_age.is_some() || request.min_fresh.is_some();
        if in_grace && !self.directives.no_cache && !self.directives.must_revalidate && !client_strict {
            return Freshness::StaleWhileRevalidate;
        }
        Freshness::Stale
    }

    /// Whether it may stand in for an origin that failed.
    pub fn serves_on_error(&self, now: Instant) -> bool {
        !self.directives.must_revalidate && self.age(now) < self.lifetime + self.stale_if_error
    }

    /// Its `ETag`, if any.
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    /// Its `Last-Modified`, if any.
    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    /// How long past now the store should keep it.
    pub fn retain_for(&self, now: Instant) -> Duration {
        let has_validator = self.etag().is_some() || self.last_modified().is_some();
        let grace = self.stale_while_revalidate.max(self.stale_if_error).max(if has_validator {
            self.keep_stale
        } else {
            Duration::ZERO
        });
        (self.lifetime + grace).saturating_sub(self.age(now)).max(Duration::from_secs(1))
    }

    /// Bytes it occupies, roughly: body plus headers.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum();
        self.body.len() + headers + 256
    }

    /// Whether it answers a request whose headers are `request`: its `Vary` headers match and,
    /// for a stored part, the request asks for a range inside it.
    pub fn selected_by(&self, request: &HeaderMap, compression: Option<&CompressionSettings>) -> bool {
        self.vary.iter().all(|(name, value)| selecting_value(name, request, compression) == *value)
            && self.coding_accepted_by(request)
            && self
                .part
                .is_none_or(|part| range::answer_from_part(request, &self.headers, part, self.body.len()).is_some())
    }

    /// Whether the client accepts the stored body's `Content-Encoding`. Variants are keyed by the
    /// encoding the route would choose, but an origin may have chosen differently. Only the
    /// codings Sluice knows are checked: an unknown one is the origin's business, served as
    /// stored.
    fn coding_accepted_by(&self, request: &HeaderMap) -> bool {
        let Some(coding) = self.headers.get(header::CONTENT_ENCODING).and_then(|value| value.to_str().ok()) else {
            return true;
        };
        let accept = request.get(header::ACCEPT_ENCODING).and_then(|value| value.to_str().ok()).unwrap_or_default();
        match compression::Encoding::from_token(&coding.trim().to_ascii_lowercase()) {
            Some(encoding) => compression::negotiate(accept, &[encoding]).is_some(),
            None => true,
        }
    }

    /// Whether the client's own validators show it already has this response.
    pub fn not_modified_for(&self, request: &HeaderMap) -> bool {
        if self.status != StatusCode::OK {
            return false;
        }
        if let Some(if_none_match) = request.get(header::IF_NONE_MATCH) {
            // Compared as bytes: an entity tag may hold obs-text, which is not a str.
            let Some(etag) = self.etag() else { return false };
            let opaque = |tag: &[u8]| {
                let tag = tag.trim_ascii();
                tag.strip_prefix(b"W/").unwrap_or(tag).to_vec()
            };
            let wanted = if_none_match.as_bytes();
            return wanted.trim_ascii() == b"*"
                || wanted.split(|byte| *byte == b',').any(|tag| opaque(tag) == opaque(etag.as_bytes()));
        }
        let since = policy::date_header(request, header::IF_MODIFIED_SINCE);
        // Without Last-Modified, its Date stands for when it was last known unchanged (RFC 9111
        // section 4.3.2).
        let modified = policy::date_header(&self.headers, header::LAST_MODIFIED)
            .or_else(|| policy::date_header(&self.headers, header::DATE));
        matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
    }

    /// The response a client gets from it: the stored one with its current `Age`, a 304 when
    /// the client's validators match, the part a `Range` asks for (206, or 416 when it selects
    /// nothing), without a body for HEAD.
    pub fn response(&self, now: Instant, method: &Method, request: &HeaderMap) -> Response<ProxyBody> {
        let not_modified = self.not_modified_for(request);
        let ranged = if let Some(part) = self.part {
            range::answer_from_part(request, &self.headers, part, self.body.len())
                .unwrap_or(RangeAnswer::Partial(part.start..part.start + self.body.len()))
        } else if not_modified || self.status != StatusCode::OK || method != Method::GET {
            RangeAnswer::Whole
        } else {
            range::answer(request, &self.headers, self.body.len())
        };
        // Offsets are into the whole representation; a stored part's body starts at its own.
        let (offset, whole) = self.part.map_or((0, self.body.len()), |part| (part.start, part.complete));
        let mut headers = HeaderMap::new();
        let (status, body) = if not_modified {
            for name in [header::CACHE_CONTROL, header::ETAG, header::EXPIRES, header::VARY, header::LAST_MODIFIED] {
                for value in self.headers.get_all(&name) {
                    headers.append(name.clone(), value.clone());
                }
            }
            (StatusCode::NOT_MODIFIED, body::empty())
        } else {
            // Room for what is added on the way out (Age, Cache-Status, the request id, Via...),
            // so that they do not make the map grow.
            headers.reserve(self.headers.len() + 6);
            for (name, value) in &self.headers {
                headers.append(name.clone(), value.clone());
            }
            match ranged {
                RangeAnswer::Whole if method == Method::HEAD => (self.status, body::empty()),
                RangeAnswer::Whole => (self.status, body::full(self.body.clone())),
                RangeAnswer::Partial(part) => {
                    let content_range = format!("bytes {}-{}/{whole}", part.start, part.end - 1);
                    headers.insert(header::CONTENT_RANGE, HeaderValue::try_from(content_range).expect("ascii"));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
                    let body = if method == Method::HEAD {
                        body::empty()
                    } else {
                        body::full(self.body.slice(part.start - offset..part.end - offset))
                    };
                    (StatusCode::PARTIAL_CONTENT, body)
                }
                RangeAnswer::Unsatisfiable => {
                    let content_range = format!("bytes */{whole}");
                    headers.insert(header::CONTENT_RANGE, HeaderValue::try_from(content_range).expect("ascii"));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    (StatusCode::RANGE_NOT_SATISFIABLE, body::empty())
                }
            }
        };
        headers.insert(header::AGE, HeaderValue::from(self.age(now).as_secs()));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// The value of request header `name` that selects a variant. `Accept-Encoding` is reduced to
/// the encoding the route would choose, so that the many ways clients spell it share variants.
pub fn selecting_value(
    name: &HeaderName,
    request: &HeaderMap,
    compression: Option<&CompressionSettings>,
) -> Option<String> {
    if name == header::ACCEPT_ENCODING
        && let Some(settings) = compression
    {
        let accept = request.get(header::ACCEPT_ENCODING).and_then(|value| value.to_str().ok()).unwrap_or_default();
        return Some(
            compression::negotiate(accept, &settings.encodings)
                .map_or("identity", |encoding| encoding.token())
                .to_owned(),
        );
    }
    let values: Vec<&str> = request.get_all(name).iter().filter_map(|value| value.to_str().ok()).collect();
    if values.is_empty() {
        return None;
    }
    // Whitespace between list items is not significant, nor is the case of language tags.
    let joined = values.join(",").split(',').map(str::trim).collect::<Vec<_>>().join(",");
    Some(if *name == header::ACCEPT_LANGUAGE { joined.to_ascii_lowercase() } else { joined })
}

/// The header names a response's `Vary` lists.
pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// Every stored variant of one key.
#[derive(Debug, Default)]
pub struct Variants {
    /// Newest first.
    pub entries: Vec<Arc<Entry>>,
    /// The sum of their sizes.
    pub size: usize,
    /// How long the store keeps the key, from when it was last written.
    pub retain_for: Duration,
}

impl Variants {
    /// These variants with `entry` added, replacing any variant with the same selecting values;
    /// a stored part does not replace a whole response.
    pub fn with(&self, entry: Arc<Entry>, now: Instant) -> Self {
        if entry.part.is_some() && self.entries.iter().any(|old| old.vary == entry.vary && old.part.is_none()) {
            return Self::from_entries(self.entries.clone(), now);
        }
        let mut entries = vec![entry.clone()];
        entries.extend(self.entries.iter().filter(|old| old.vary != entry.vary).take(MOST_VARIANTS - 1).cloned());
        Self::from_entries(entries, now)
    }

    /// These variants without `entry`.
    pub fn without(&self, entry: &Arc<Entry>, now: Instant) -> Self {
        Self::from_entries(self.entries.iter().filter(|old| !Arc::ptr_eq(old, entry)).cloned().collect(), now)
    }

    fn from_entries(entries: Vec<Arc<Entry>>, now: Instant) -> Self {
        let size = entries.iter().map(|entry| entry.size()).sum();
        let retain_for = entries.iter().map(|entry| entry.retain_for(now)).max().unwrap_or_default();
        Self { entries, size, retain_for }
    }

    /// A stored part from the first byte that a request for the whole representation can be
    /// completed from, with a range request for the rest.
    pub fn part_to_complete(
        &self,
        request: &HeaderMap,
        compression: Option<&CompressionSettings>,
    ) -> Option<&Arc<Entry>> {
        if request.contains_key(header::RANGE) {
            return None;
        }
        self.entries.iter().find(|entry| {
            entry.part.is_some_and(|part| part.start == 0 && part.length == entry.body.len())
                && entry.vary.iter().all(|(name, value)| selecting_value(name, request, compression) == *value)
                && entry.coding_accepted_by(request)
        })
    }

    /// The variant that answers a request, if any.
    pub fn select(&self, request: &HeaderMap, compression: Option<&CompressionSettings>) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|entry| entry.selected_by(request, compression))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_http::compression::{CompressionLevel, Encoding};

    fn entry(headers: &[(&str, &str)], lifetime: u64, directives: Directives) -> Entry {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        Entry {
            status: StatusCode::OK,
            headers: map,
            body: Bytes::from_static(b"body"),
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(lifetime),
            directives,
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            keep_stale: Duration::from_secs(3600),
            vary: Vec::new(),
            tags: Vec::new(),
            part: None,
        }
    }

    #[test]
    fn freshness_moves_from_fresh_to_grace_to_stale() {
        let stored = entry(&[], 60, Directives::default());
        let at = |seconds| stored.stored_at + Duration::from_secs(seconds);
        let plain = Directives::default();
        assert_eq!(stored.freshness(at(10), &plain), Freshness::Fresh);
        assert_eq!(stored.ttl_seconds(at(10)), 50);
        assert_eq!(stored.freshness(at(70), &plain), Freshness::StaleWhileRevalidate);
        assert_eq!(stored.freshness(at(100), &plain), Freshness::Stale);
        assert!(stored.serves_on_error(at(300)) && !stored.serves_on_error(at(400)));
        assert_eq!(stored.ttl_seconds(at(100)), -40);

        let strict = entry(&[], 60, Directives { must_revalidate: true, ..Directives::default() });
        assert_eq!(strict.freshness(at(70), &plain), Freshness::Stale, "must-revalidate: no stale serving");
        assert!(!strict.serves_on_error(at(70)));
        let no_cache = entry(&[], 60, Directives { no_cache: true, ..Directives::default() });
        assert_eq!(no_cache.freshness(at(0), &plain), Freshness::Stale, "no-cache: always revalidated");
        let client_no_cache = Directives { no_cache: true, ..Directives::default() };
        assert_eq!(stored.freshness(at(0), &client_no_cache), Freshness::Stale);
        let client_max_age = Directives { max_age: Some(Duration::from_secs(5)), ..Directives::default() };
        assert_eq!(stored.freshness(at(10), &client_max_age), Freshness::Stale, "fresh, but not for this client");
        assert_eq!(stored.freshness(at(70), &client_max_age), Freshness::Stale, "nor served stale to it");
    }

    #[test]
    fn client_validators_turn_a_hit_into_304() {
        let stored = entry(
            &[("etag", "W/\"v1\""), ("last-modified", "Mon, 23 Nov 2026 05:00:00 GMT")],
            60,
            Directives::default(),
        );
        let request = |name: &str, value: &str| {
            let mut map = HeaderMap::new();
            map.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
            map
        };
        assert!(stored.not_modified_for(&request("if-none-match", "\"v0\", \"v1\"")));
        assert!(!stored.not_modified_for(&request("if-none-match", "\"v2\"")));
        assert!(stored.not_modified_for(&request("if-modified-since", "Mon, 23 Nov 2026 06:00:00 GMT")));
        assert!(!stored.not_modified_for(&request("if-modified-since", "Mon, 23 Nov 2026 04:00:00 GMT")));
        let response = stored.response(stored.stored_at, &Method::GET, &request("if-none-match", "W/\"v1\""));
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()["etag"], "W/\"v1\"");
        assert_eq!(response.headers()["age"], "0");
    }

    #[test]
    fn accept_encoding_selects_by_the_encoding_chosen() {
        let settings = CompressionSettings {
            encodings: vec![Encoding::Zstd, Encoding::Gzip],
            min_bytes: 0,
            content_types: vec![],
            level: CompressionLevel::Default,
        };
        let with = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            selecting_value(&header::ACCEPT_ENCODING, &map, Some(&settings))
        };
        assert_eq!(with("gzip, deflate, br, zstd"), with("zstd"));
        assert_eq!(with("gzip, deflate"), Some("gzip".into()));
        assert_eq!(with("identity"), Some("identity".into()));
        // An origin's own choice of encoding is served only to clients that accept it.
        let mut stored = entry(&[("content-encoding", "gzip")], 60, Directives::default());
        stored.vary = vec![(header::ACCEPT_ENCODING, Some("br".into()))];
        let accepting = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            map
        };
        let brotli_first = CompressionSettings { encodings: vec![Encoding::Brotli, Encoding::Gzip], ..settings };
        assert!(stored.selected_by(&accepting("gzip, br"), Some(&brotli_first)));
        assert!(!stored.selected_by(&accepting("br"), Some(&brotli_first)), "br only: the gzip body is not for it");
        let mut languages = HeaderMap::new();
        languages.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en,  fr"));
        assert_eq!(selecting_value(&header::ACCEPT_LANGUAGE, &languages, None), Some("en,fr".into()));
        assert_eq!(selecting_value(&header::COOKIE, &languages, None), None);
    }
}
