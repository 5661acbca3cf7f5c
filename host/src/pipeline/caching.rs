//! Where the HTTP cache meets one request, between the request phase and the upstream: answer
//! from a stored response, serve stale while refreshing, wait for a request already fetching
//! the same key, or go to the origin (conditionally when a stale entry has a validator). After
//! the origin answers: a 304 to a revalidation refreshes the entry, a failure may be covered by
//! a stale entry, and anything else is stored as it streams (see [`sluice_cache::FillBody`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};

use super::ProxyError;
use crate::routing::Route;
use sluice_cache::{
    CacheSettings, CacheStatus, Directives, Entry, EntryKey, Fill, FillTicket, Freshness, HttpCache, PurgeTarget,
};
use sluice_http::body::{self, ProxyBody};
use sluice_runtime::RequestHead;

/// What the cache makes of a request before the origin is asked.
pub(crate) enum Lookup {
    /// Answer with this: a hit, a 304 for the client's own validators, or a 504 for
    /// `only-if-cached` with nothing stored.
    Answer(Response<ProxyBody>, CacheStatus),
    /// Answer with a stale response now; refresh it in the background with the ticket, unless
    /// another request is already refreshing it.
    StaleAndRefresh { response: Response<ProxyBody>, status: CacheStatus, refresh: Option<Forwarding> },
    /// Ask the origin.
    Forward(Forwarding),
}

/// A request on its way to the origin, as the cache sees it.
pub(crate) struct Forwarding {
    status: CacheStatus,
    /// Where the response is stored, when this request fills the key.
    ticket: Option<FillTicket>,
    /// The stale entry, for revalidation and stale-if-error.
    stale: Option<Arc<Entry>>,
    /// The request went out with the stale entry's validators.
    revalidating: bool,
    /// An unsafe request: what its success invalidates.
    invalidates: Option<Invalidation>,
    /// A stored first part of the representation; the request asks the origin for the rest.
    completing: Option<Arc<Entry>>,
}

/// What a successful unsafe request makes suspect (RFC 9111 section 4.4): its own URI, and the
/// URIs its response names in `Location` and `Content-Location` on the same host.
struct Invalidation {
    cache: Arc<HttpCache>,
    route: Arc<str>,
    key: Arc<str>,
    host: String,
    path: String,
}

impl Invalidation {
    /// Whether `response` (to a POST) says it is the current state of the request's own URI,
    /// with an explicit lifetime.
    fn names_itself(&self, response: &Response<ProxyBody>) -> bool {
        let headers = response.headers();
        let explicit = {
            let directives = Directives::parse(headers);
            directives.max_age.is_some() || directives.s_maxage.is_some() || headers.contains_key(header::EXPIRES)
        };
        let location = headers.get(header::CONTENT_LOCATION).and_then(|value| value.to_str().ok());
        response.status() == StatusCode::OK
            && explicit
            && location.and_then(|location| same_host_path(location, &self.host, &self.path)).as_deref()
                == Some(self.path.as_str())
    }

    fn after(self, response: &Response<ProxyBody>) {
        // An error says nothing changed.
        if !(response.status().is_success() || response.status().is_redirection()) {
            return;
        }
        self.cache.purge(PurgeTarget::Key(&self.key), Some(&self.route));
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(named) = response.headers().get(&name).and_then(|value| value.to_str().ok()) else { continue };
            if let Some(path) = same_host_path(named, &self.host, &self.path) {
                let key = sluice_cache::default_key(&self.host, &path);
                if *key != *self.key {
                    self.cache.purge(PurgeTarget::Key(&key), Some(&self.route));
                }
            }
        }
    }
}

/// The path and query `reference` names when it is on `host`: an absolute URI on the same host,
/// an absolute path, or a path relative to `base`'s folder. `None` for another host.
fn same_host_path(reference: &str, host: &str, base: &str) -> Option<String> {
    let reference = reference.trim();
    if reference.starts_with("//") || reference.contains("://") {
        let uri: http::Uri = reference.parse().ok()?;
        let authority = uri.authority()?;
        if !authority.as_str().eq_ignore_ascii_case(host) {
            return None;
        }
        return Some(uri.path_and_query().map_or("/", |path| path.as_str()).to_owned());
    }
    if reference.starts_with('/') {
        return Some(reference.to_owned());
    }
    let base = base.split('?').next().unwrap_or("/");
    let folder = &base[..base.rfind('/').map_or(0, |slash| slash + 1)];
    Some(format!("{}{reference}", if folder.is_empty() { "/" } else { folder }))
}

impl Forwarding {
    fn bypass(reason: &'static str) -> Self {
        Self {
            status: CacheStatus::forward(reason),
            ticket: None,
            stale: None,
            revalidating: false,
            invalidates: None,
            completing: None,
        }
    }

    /// What the lookup found, as traces name it: `miss`, `bypass`, or `stale` when the origin
    /// is asked to revalidate a stored response.
    pub(crate) fn result(&self) -> &'static str {
        if self.revalidating { "stale" } else { self.status.result() }
    }
}

/// Decides how a request on a caching route is answered; may wait for another request fetching
/// the same key, and adds validators to `head` when it revalidates.
pub(crate) async fn lookup(
    cache: &Arc<HttpCache>,
    settings: &Arc<CacheSettings>,
    route: &Route,
    head: &mut RequestHead,
    host: &str,
    default_key: String,
) -> Lookup {
    let key = EntryKey { route: route.name.clone(), key: Arc::from(head.cache_key.take().unwrap_or(default_key)) };
    let method = head.parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        let mut forwarding = Forwarding::bypass("method");
        // A change through this URI makes what is stored for it suspect, once it succeeds.
        if !method.is_safe() {
            if method == Method::POST {
                // Kept only if the response says it is the resource's new state (below).
                forwarding.ticket = Some(ticket(cache, settings, route, head, &key, Directives::default(), None));
            }
            forwarding.invalidates = Some(Invalidation {
                cache: cache.clone(),
                route: route.name.clone(),
                key: key.key.clone(),
                host: host.to_owned(),
                path: head.parts.uri.path_and_query().map_or("/", |path| path.as_str()).to_owned(),
            });
        }
        return Lookup::Forward(forwarding);
    }
    if settings.bypassed_by(&head.parts.headers) {
        return Lookup::Forward(Forwarding::bypass("bypass"));
    }
    let directives = Directives::parse(&head.parts.headers);
    let compression = route.compression.as_deref();
    let mut collapsed = false;
    loop {
        let now = Instant::now();
        let variants = cache.variants(&key);
        let entry = variants.as_ref().and_then(|variants| variants.select(&head.parts.headers, compression)).cloned();
        if let Some(entry) = &entry {
            match entry.freshness(now, &directives) {
                Freshness::Fresh => {
                    let status = CacheStatus { collapsed, ..CacheStatus::hit(entry.ttl_seconds(now)) };
                    return Lookup::Answer(entry.response(now, &method, &head.parts.headers), status);
                }
                Freshness::StaleWhileRevalidate => {
                    let response = entry.response(now, &method, &head.parts.headers);
                    let status = CacheStatus {
                        detail: Some("stale-while-revalidate"),
                        ..CacheStatus::hit(entry.ttl_seconds(now))
                    };
                    // Only one request refreshes an entry; the rest are served stale meanwhile.
                    let refresh = match cache.join_fill(&key) {
                        Fill::Leader(guard) if method == Method::GET => {
                            let ticket = ticket(cache, settings, route, head, &key, directives.clone(), Some(guard));
                            let revalidating = revalidate_with(&mut head.parts.headers, entry);
                            let status = CacheStatus::forward("stale");
                            Some(Forwarding {
                                status,
                                ticket: Some(ticket),
                                stale: Some(entry.clone()),
                                revalidating,
                                invalidates: None,
                                completing: None,
                            })
                        }
                        _ => None,
                    };
                    return Lookup::StaleAndRefresh { response, status, refresh };
                }
                Freshness::Stale => {}
            }
        }
        // A stale stored part is neither revalidated nor served on error: it is fetched again.
        let entry = entry.filter(|entry| entry.part.is_none());
        if directives.only_if_cached {
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return Lookup::Answer(
                response,
                CacheStatus { detail: Some("only-if-cached"), ..CacheStatus::forward("miss") },
            );
        }
        let reason = match (&entry, &variants) {
            (Some(_), _) if directives.no_cache => "request",
            (Some(_), _) => "stale",
            (None, Some(_)) => "vary-miss",
            (None, None) => "uri-miss",
        };
        let guard = if method == Method::HEAD || collapsed {
            // HEAD responses are not stored; a request that already waited once goes itself.
            None
        } else {
            match cache.join_fill(&key) {
                Fill::Leader(guard) => Some(guard),
                Fill::Follower(mut done) => {
                    // Woken when the other request's response is stored or abandoned.
                    let _ = tokio::time::timeout(settings.lock_timeout, done.changed()).await;
                    collapsed = true;
                    continue;
                }
            }
        };
        // A HEAD's ticket never stores its (empty) body; it lets a 200 freshen the stored GET.
        let ticket = Some(ticket(cache, settings, route, head, &key, directives.clone(), guard));
        let revalidating = method == Method::GET
            && entry.as_ref().is_some_and(|entry| revalidate_with(&mut head.parts.headers, entry));
        let completing = match (&entry, &variants) {
            (None, Some(variants)) if method == Method::GET => variants
                .part_to_complete(&head.parts.headers, compression)
                .filter(|part| part.freshness(now, &directives) == Freshness::Fresh)
                .filter(|part| ask_for_the_rest(&mut head.parts.headers, part))
                .cloned(),
            _ => None,
        };
        let reason = if completing.is_some() { "partial" } else { reason };
        let status = CacheStatus { collapsed, ..CacheStatus::forward(reason) };
        return Lookup::Forward(Forwarding {
            status,
            ticket,
            stale: entry,
            revalidating,
            invalidates: None,
            completing,
        });
    }
}

fn ticket(
    cache: &Arc<HttpCache>,
    settings: &Arc<CacheSettings>,
    route: &Route,
    head: &RequestHead,
    key: &EntryKey,
    request_directives: Directives,
    guard: Option<sluice_cache::FillGuard>,
) -> FillTicket {
    FillTicket {
        cache: cache.clone(),
        key: key.clone(),
        settings: settings.clone(),
        compression: route.compression.clone(),
        request_headers: head.parts.headers.clone(),
        request_directives,
        request_time: SystemTime::now(),
        guard,
        purge_generation: cache.purge_generation(),
    }
}

/// Asks for the bytes after a stored first part, `If-Range` its strong validator so that a
/// changed representation comes whole. Returns false (and asks nothing) without one.
fn ask_for_the_rest(headers: &mut HeaderMap, part: &Entry) -> bool {
    let etag = part.etag().filter(|etag| !etag.as_bytes().starts_with(b"W/"));
    let Some(validator) = etag.or_else(|| part.last_modified()).cloned() else { return false };
    let range = format!("bytes={}-", part.body.len());
    headers.insert(header::RANGE, http::HeaderValue::try_from(range).expect("ascii"));
    headers.insert(header::IF_RANGE, validator);
    true
}

/// The whole response from a stored first part and the origin's answer for the rest: a 206 for
/// exactly the rest is joined to the part; a 200 (the representation changed) is whole already.
fn complete(response: Response<ProxyBody>, part: &Entry) -> Result<Response<ProxyBody>, ProxyError> {
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Ok(response);
    }
    let stored = part.part.expect("a stored part");
    let rest = sluice_cache::range::Part::of(response.headers());
    let expected = sluice_cache::range::Part {
        start: stored.length,
        length: stored.complete - stored.length,
        complete: stored.complete,
    };
    if rest != Some(expected) {
        return Err(ProxyError::UpstreamFailed {
            server: "origin".to_owned(),
            reason: "answered the request for the rest of a stored part with another range".to_owned(),
        });
    }
    let (mut parts, body) = response.into_parts();
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_RANGE);
    parts.headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(stored.complete));
    let body = sluice_cache::CompletedBody::new(part.body.clone(), body);
    Ok(Response::from_parts(parts, sluice_http::body::boxed(body)))
}

/// Adds the stale entry's validators to the request, unless the client sent its own (then a
/// 304 is the client's, not the cache's). Returns whether it did.
fn revalidate_with(headers: &mut HeaderMap, entry: &Entry) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) || headers.contains_key(header::IF_MODIFIED_SINCE) {
        return false;
    }
    if let Some(etag) = entry.etag() {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(last_modified) = entry.last_modified() {
        headers.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
    }
    entry.etag().is_some() || entry.last_modified().is_some()
}

/// The response to a forwarded request.
// Made and taken apart once per request: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// A stored response stood in (refreshed by a 304, or covering a failure).
    FromCache(Response<ProxyBody>, CacheStatus),
    /// The origin's response, with the ticket that stores it when it may be stored.
    FromOrigin(Response<ProxyBody>, CacheStatus, Option<FillTicket>),
}

/// Takes the origin's answer (or failure) to a request the cache forwarded: refreshes on a 304
/// to its revalidation, covers failures with a stale entry where allowed, and otherwise passes
/// the response on with the ticket that stores it.
pub(crate) fn after_forward(
    forwarded: Result<Response<ProxyBody>, ProxyError>,
    forwarding: Forwarding,
    head_only: bool,
) -> Result<Answer, ProxyError> {
    let Forwarding { mut status, ticket, stale, revalidating, invalidates, completing } = forwarding;
    if let Some(invalidation) = invalidates {
        let response = forwarded?;
        status.forward_status = Some(response.status().as_u16());
        let stores = ticket.is_some() && invalidation.names_itself(&response);
        invalidation.after(&response);
        // A POST response with explicit freshness whose Content-Location is the request's own
        // URI is what a GET of that URI would get (RFC 9110 section 9.3.3): stored as such.
        let ticket = ticket.filter(|_| stores).map(|mut ticket| {
            ticket.purge_generation = ticket.cache.purge_generation();
            ticket
        });
        return Ok(Answer::FromOrigin(response, status, ticket));
    }
    let now = Instant::now();
    let origin_failed = match &forwarded {
        Err(error) => matches!(
            error,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamFailed { .. }
        ),
        Ok(response) => matches!(response.status().as_u16(), 500 | 502 | 503 | 504),
    };
    if origin_failed && let Some(stale) = stale.as_ref().filter(|stale| stale.serves_on_error(now)) {
        status.forward = Some("stale");
        status.forward_status = Some(forwarded.as_ref().map_or(502, |response| response.status().as_u16()));
        status.ttl = Some(stale.ttl_seconds(now));
        status.detail = Some("stale-if-error");
        let method = if head_only { Method::HEAD } else { Method::GET };
        return Ok(Answer::FromCache(stale.response(now, &method, &HeaderMap::new()), status));
    }
    let response = forwarded?;
    status.forward_status = Some(response.status().as_u16());
    if head_only {
        // A HEAD's 200 updates the stored GET response it describes (RFC 9111 section 4.3.5).
        if let (Some(ticket), Some(stale)) = (&ticket, &stale)
            && response.status() == StatusCode::OK
            && describes_same_body(stale, response.headers())
        {
            let (refreshed, _) = refresh(ticket, stale, response.headers());
            status.stored = !Arc::ptr_eq(&refreshed, stale);
        }
        return Ok(Answer::FromOrigin(response, status, None));
    }
    if let Some(part) = completing {
        return Ok(Answer::FromOrigin(complete(response, &part)?, status, ticket));
    }
    if revalidating && response.status() == StatusCode::NOT_MODIFIED {
        let (Some(ticket), Some(stale)) = (ticket, stale) else {
            return Ok(Answer::FromOrigin(response, status, None));
        };
        let (refreshed, merged) = refresh(&ticket, &stale, response.headers());
        status.ttl = Some(refreshed.ttl_seconds(now));
        status.stored = !Arc::ptr_eq(&refreshed, &stale);
        // This client gets every field of the 304, those kept out of the store included (a
        // Set-Cookie meant for it).
        let mut answer = refreshed.response(now, &Method::GET, &HeaderMap::new());
        let age = answer.headers_mut().remove(header::AGE);
        *answer.headers_mut() = merged;
        if let Some(age) = age {
            answer.headers_mut().insert(header::AGE, age);
        }
        return Ok(Answer::FromCache(answer, status));
    }
    Ok(Answer::FromOrigin(response, status, ticket))
}

/// The stored entry brought up to date by a 304's headers (RFC 9111 section 4.3.4) and stored
/// again, with the merged headers; when the new headers forbid storing it, it is dropped from
/// the store and the stale entry comes back.
pub(crate) fn refresh(ticket: &FillTicket, stale: &Arc<Entry>, not_modified: &HeaderMap) -> (Arc<Entry>, HeaderMap) {
    let mut headers = stale.headers.clone();
    let mut replaced = std::collections::HashSet::new();
    for (name, value) in not_modified {
        if kept_from_stored(name) {
            continue;
        }
        if replaced.insert(name.clone()) {
            headers.remove(name);
        }
        headers.append(name.clone(), value.clone());
    }
    let entry = match ticket.entry_for(stale.status, &headers, SystemTime::now()) {
        Ok(mut entry) => {
            entry.body = stale.body.clone();
            let entry = Arc::new(entry);
            ticket.cache.insert(&ticket.key, entry.clone());
            entry
        }
        Err(_) => {
            ticket.cache.remove(&ticket.key, stale);
            stale.clone()
        }
    };
    (entry, headers)
}

/// Whether a HEAD response's validators and length agree with the stored response's, so that
/// its fields may update it.
fn describes_same_body(stored: &Entry, head: &HeaderMap) -> bool {
    let same = |name: header::HeaderName| match (stored.headers.get(&name), head.get(&name)) {
        (Some(stored), Some(fresh)) => stored == fresh,
        _ => true,
    };
    same(header::ETAG) && same(header::LAST_MODIFIED) && same(header::CONTENT_LENGTH)
}

/// Fields a 304 does not change in the stored response (RFC 9111 section 3.2): those that
/// describe the stored body itself (its length, coding, range and digest) and its entity tag,
/// which Sluice may have made weak when it compressed the body.
fn kept_from_stored(name: &header::HeaderName) -> bool {
    matches!(
        *name,
        header::CONTENT_LENGTH
            | header::CONTENT_ENCODING
            | header::TRANSFER_ENCODING
            | header::CONTENT_RANGE
            | header::ETAG
    ) || name == "content-md5"
        || name == sluice_http::X_REQUEST_ID
}
