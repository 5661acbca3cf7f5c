//! RFC 9111 as a shared cache reads it: `Cache-Control` directives, whether a response may be
//! stored, how long it stays fresh, and its age. Pure functions of headers and times, so that
//! every rule is tested here without a clock or a socket.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// The `Cache-Control` directives Sluice acts on, from a request or a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `max-age=N`.
    pub max_age: Option<Duration>,
    /// `s-maxage=N` (responses; wins over `max-age` in a shared cache).
    pub s_maxage: Option<Duration>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` without field names: every reuse is revalidated.
    pub no_cache: bool,
    /// `private` without field names (a shared cache must not store the response).
    pub private: bool,
    /// The fields `no-cache="..."` and `private="..."` name: the response may be stored and
    /// reused without them (RFC 9111 sections 5.2.2.4 and 5.2.2.7), so they are not stored.
    pub unshared_fields: Vec<HeaderName>,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
    /// `stale-while-revalidate=N` (RFC 5861).
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error=N` (RFC 5861).
    pub stale_if_error: Option<Duration>,
    /// `only-if-cached` (requests).
    pub only_if_cached: bool,
    /// `max-stale[=N]` (requests): `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<Duration>>,
    /// `min-fresh=N` (requests).
    pub min_fresh: Option<Duration>,
    /// `must-understand` (responses): store only statuses whose caching rules Sluice knows.
    pub must_understand: bool,
}

impl Directives {
    /// The directives of every `Cache-Control` field in `headers`. A request with no
    /// `Cache-Control` but `Pragma: no-cache` counts as `no-cache` (RFC 9111 section 5.4).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        let mut seen_cache_control = false;
        for value in headers.get_all(header::CACHE_CONTROL) {
            seen_cache_control = true;
            let Ok(value) = value.to_str() else { continue };
            for item in split_list(value) {
                let (name, argument) = match item.split_once('=') {
                    Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let seconds = || argument.and_then(parse_delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => directives.max_age = seconds().or(Some(Duration::ZERO)),
                    "s-maxage" => directives.s_maxage = seconds().or(Some(Duration::ZERO)),
                    "no-store" => directives.no_store = true,
                    "no-cache" | "private" if argument.is_some_and(|fields| !fields.trim().is_empty()) => {
                        let fields = argument.unwrap_or_default().split(',');
                        directives.unshared_fields.extend(fields.filter_map(|field| field.trim().parse().ok()));
                    }
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "public" => directives.public = true,
                    "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = true,
                    "stale-while-revalidate" => directives.stale_while_revalidate = seconds(),
                    "stale-if-error" => directives.stale_if_error = seconds(),
                    "only-if-cached" => directives.only_if_cached = true,
                    "max-stale" => directives.max_stale = Some(seconds()),
                    "min-fresh" => directives.min_fresh = seconds(),
                    "must-understand" => directives.must_understand = true,
                    _ => {}
                }
            }
        }
        if !seen_cache_control
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .any(|value| split_list(value).any(|item| item.trim().eq_ignore_ascii_case("no-cache")))
        {
            directives.no_cache = true;
        }
        directives
    }
}

impl Directives {
    /// The directives of the first of `fields` (targeted fields such as `CDN-Cache-Control`,
    /// RFC 9213) that the response carries as a valid Structured Field dictionary. A field that
    /// does not parse, or gives a directive a value of the wrong type, is ignored as if absent.
    pub fn parse_targeted(headers: &HeaderMap, fields: &[HeaderName]) -> Option<Self> {
        fields.iter().find_map(|field| Self::parse_structured(headers, field))
    }

    fn parse_structured(headers: &HeaderMap, field: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(field).iter();
        let mut dictionary: sfv::Dictionary = sfv::Parser::new(lines.next()?.as_bytes()).parse().ok()?;
        for line in lines {
            dictionary = sfv::Parser::new(line.as_bytes()).parse_dictionary_with_visitor(dictionary).ok()?;
        }
        let mut directives = Self::default();
        for (name, member) in &dictionary {
            let sfv::ListEntry::Item(item) = member else { return None };
            let seconds = || -> Option<Option<Duration>> {
                let value = i64::from(item.bare_item.as_integer()?);
                Some(Some(Duration::from_secs(u64::try_from(value).ok()?)))
            };
            let flag = || item.bare_item.as_boolean();
            match name.as_str() {
                "max-age" => directives.max_age = seconds()?,
                "s-maxage" => directives.s_maxage = seconds()?,
                "stale-while-revalidate" => directives.stale_while_revalidate = seconds()?,
                "stale-if-error" => directives.stale_if_error = seconds()?,
                // Field names after no-cache or private are taken as the whole response, as in
                // Cache-Control.
                "no-cache" => directives.no_cache = true,
                "private" => directives.private = true,
                "no-store" => directives.no_store = flag()?,
                "public" => directives.public = flag()?,
                "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = flag()?,
                "must-understand" => directives.must_understand = flag()?,
                _ => {}
            }
        }
        Some(directives)
    }
}

/// Items of a comma-separated list, ignoring commas inside quoted strings.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut items = Vec::new();
    for (index, character) in value.char_indices() {
        match character {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                items.push(&value[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items.into_iter().map(str::trim).filter(|item| !item.is_empty())
}

/// A delta-seconds value; huge values saturate rather than fail (RFC 9111 section 1.2.2).
fn parse_delta_seconds(text: &str) -> Option<Duration> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::from(u32::MAX))))
}

/// A date header, `None` when absent or not an HTTP-date.
pub fn date_header(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers.get(name)?.to_str().ok().and_then(|text| httpdate::parse_http_date(text).ok())
}

/// Statuses a cache may store with a heuristic lifetime (RFC 9110 section 15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Statuses whose caching rules Sluice implements, for `must-understand`: those RFC 9110
/// defines (with final semantics a cache can reuse) and 206.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=505 | 511
    )
}

/// Why a response was not stored; shown in `Cache-Status` as `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only GET responses are stored.
    Method,
    /// A status that is neither understood nor given an explicit lifetime.
    Status,
    /// `no-store` on the request or the response.
    NoStore,
    /// `private`.
    Private,
    /// The request carried credentials and the response did not say it may be shared.
    Authorization,
    /// `Set-Cookie`: one client's cookie must not reach another.
    SetCookie,
    /// `Vary: *` never matches a later request.
    VaryAll,
    /// No lifetime, no validator: nothing to gain from storing it.
    NoLifetime,
    /// Larger than the route's `max_object_bytes`.
    TooLarge,
}

impl NotStored {
    /// The `detail` token in `Cache-Status`.
    pub fn detail(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set-cookie",
            Self::VaryAll => "vary-star",
            Self::NoLifetime => "no-lifetime",
            Self::TooLarge => "too-large",
        }
    }
}

/// What a storable response's headers say about keeping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// How long it is fresh from the moment it was generated.
    pub lifetime: Duration,
    /// Its directives.
    pub directives: Directives,
}

/// The inputs to [`storable`] beyond the response's own headers.
#[derive(Debug, Clone, Copy)]
pub struct StoreContext<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The request's directives.
    pub request: &'a Directives,
    /// Whether the request carried `Authorization`.
    pub authorized: bool,
    /// Lifetime for responses that state none and may be stored; zero for none.
    pub default_ttl: Duration,
    /// Targeted fields (RFC 9213) that, when present and valid, replace `Cache-Control` and
    /// `Expires` for this cache, the first found winning.
    pub targeted: &'a [HeaderName],
    /// Whether a response without an explicit lifetime gets a heuristic one.
    pub heuristics: bool,
}

/// Whether a shared cache may store this response (RFC 9111 section 3) and, if so, for how long
/// it is fresh (section 4.2.1).
pub fn storable(context: StoreContext<'_>, status: StatusCode, headers: &HeaderMap) -> Result<Storable, NotStored> {
    if context.method != Method::GET {
        return Err(NotStored::Method);
    }
    let targeted = Directives::parse_targeted(headers, context.targeted);
    let directives = targeted.clone().unwrap_or_else(|| Directives::parse(headers));
    if directives.must_understand {
        // must-understand overrides no-store for the statuses a cache knows (RFC 9111 5.2.2.3).
        if !understood(status) {
            return Err(NotStored::Status);
        }
    } else if directives.no_store || context.request.no_store {
        return Err(NotStored::NoStore);
    }
    if directives.private {
        return Err(NotStored::Private);
    }
    if context.authorized && !(directives.public || directives.s_maxage.is_some() || directives.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    // A cookie is one client's: unless the origin said it is not to be shared with the rest.
    if headers.contains_key(header::SET_COOKIE) && !directives.unshared_fields.contains(&header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| split_list(value).any(|item| item == "*"))
    {
        return Err(NotStored::VaryAll);
    }
    // A 206 may be stored as a part (its Content-Range is checked by the caller); 304s and
    // interim responses never.
    if status == StatusCode::NOT_MODIFIED || status.is_informational() {
        return Err(NotStored::Status);
    }
    let explicit = directives.s_maxage.or(directives.max_age).or_else(|| {
        // A targeted field stands for the whole of this cache's instructions: Expires too.
        if targeted.is_some() {
            return None;
        }
        let expires = headers.get(header::EXPIRES)?;
        // An invalid Expires (often "0") means already expired.
        let Some(expires) = expires.to_str().ok().and_then(|text| httpdate::parse_http_date(text).ok()) else {
            return Some(Duration::ZERO);
        };
        let date = date_header(headers, header::DATE).unwrap_or_else(SystemTime::now);
        Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
    });
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        // `public` lets any final status be given a heuristic lifetime (RFC 9111 section 4.2.2).
        None if !heuristically_cacheable(status) && !directives.public => return Err(NotStored::Status),
        None => context.heuristics.then(|| heuristic_lifetime(headers)).flatten().unwrap_or(context.default_ttl),
    };
    let has_validator = headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let may_serve_stale = directives.stale_if_error.is_some() || directives.stale_while_revalidate.is_some();
    if lifetime.is_zero() && !has_validator && !may_serve_stale {
        return Err(NotStored::NoLifetime);
    }
    Ok(Storable { lifetime, directives })
}

/// A tenth of the time since `Last-Modified`, at most a day (RFC 9111 section 4.2.2).
fn heuristic_lifetime(headers: &HeaderMap) -> Option<Duration> {
    const MOST: Duration = Duration::from_secs(24 * 60 * 60);
    let last_modified = date_header(headers, header::LAST_MODIFIED)?;
    let date = date_header(headers, header::DATE).unwrap_or_else(SystemTime::now);
    let since = date.duration_since(last_modified).ok()?;
    Some((since / 10).min(MOST))
}

/// The response's age when it arrived (RFC 9111 section 4.2.3): the larger of what its `Date`
/// implies and what its `Age` says plus the time the request took.
pub fn initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let apparent = date_header(headers, header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = age_header(headers).unwrap_or(Duration::ZERO);
    let delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    apparent.max(age_value + delay)
}

/// The `Age` header: the first member of the first line; an invalid one (negative, decimal,
/// with parameters) is ignored (RFC 9111 section 5.1).
fn age_header(headers: &HeaderMap) -> Option<Duration> {
    let first = headers.get(header::AGE)?.to_str().ok()?.split(',').next()?;
    parse_delta_seconds(first.trim())
}

/// Whether a stored response of `age` with `lifetime` satisfies a request's directives without
/// contacting the origin.
pub fn fresh_enough(age: Duration, lifetime: Duration, request: &Directives) -> bool {
    if request.no_cache {
        return false;
    }
    if request.max_age.is_some_and(|max_age| age > max_age) {
        return false;
    }
    let min_fresh = request.min_fresh.unwrap_or(Duration::ZERO);
    if age + min_fresh < lifetime {
        return true;
    }
    // max-stale lets the client accept a stale response it asked for knowingly.
    match request.max_stale {
        Some(None) => true,
        Some(Some(tolerance)) => age <= lifetime + tolerance,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn store(status: u16, pairs: &[(&str, &str)]) -> Result<Storable, NotStored> {
        let request = Directives::default();
        let context = StoreContext {
            method: &Method::GET,
            request: &request,
            authorized: false,
            default_ttl: Duration::ZERO,
            targeted: &[],
            heuristics: true,
        };
        storable(context, StatusCode::from_u16(status).unwrap(), &headers(pairs))
    }

    #[test]
    fn directives_are_parsed_across_fields_and_quotes() {
        let parsed = Directives::parse(&headers(&[
            ("cache-control", "public, max-age=60, no-cache=\"set-cookie, foo\""),
            ("cache-control", "S-MAXAGE=\"120\", stale-while-revalidate=30, stale-if-error=600"),
        ]));
        assert_eq!(parsed.max_age, Some(Duration::from_secs(60)));
        assert_eq!(parsed.s_maxage, Some(Duration::from_secs(120)));
        assert!(parsed.public && !parsed.no_cache && !parsed.private, "no-cache names fields: not the whole");
        assert_eq!(parsed.unshared_fields, [header::SET_COOKIE, HeaderName::from_static("foo")]);
        assert_eq!(parsed.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(parsed.stale_if_error, Some(Duration::from_secs(600)));
        assert_eq!(Directives::parse(&headers(&[("cache-control", "max-age=-1")])).max_age, Some(Duration::ZERO));
        assert_eq!(
            Directives::parse(&headers(&[("cache-control", "max-age=99999999999999999999")])).max_age,
            Some(Duration::from_secs(u64::from(u32::MAX)))
        );
        assert!(Directives::parse(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(!Directives::parse(&headers(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])).no_cache);
        assert_eq!(Directives::parse(&headers(&[("cache-control", "max-stale")])).max_stale, Some(None));
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires_then_heuristic() {
        let lifetime = |status, pairs: &[(&str, &str)]| store(status, pairs).map(|stored| stored.lifetime);
        let date = "Mon, 23 Nov 2026 06:00:00 GMT";
        assert_eq!(lifetime(200, &[("cache-control", "max-age=10, s-maxage=20")]), Ok(Duration::from_secs(20)));
        assert_eq!(lifetime(200, &[("cache-control", "max-age=10")]), Ok(Duration::from_secs(10)));
        assert_eq!(
            lifetime(200, &[("date", date), ("expires", "Mon, 23 Nov 2026 06:05:00 GMT")]),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            lifetime(200, &[("date", date), ("expires", "0"), ("etag", "\"a\"")]),
            Ok(Duration::ZERO),
            "an invalid Expires means expired"
        );
        assert_eq!(
            lifetime(200, &[("date", date), ("last-modified", "Mon, 23 Nov 2026 05:00:00 GMT")]),
            Ok(Duration::from_secs(360)),
            "a tenth of an hour since modification"
        );
        assert_eq!(lifetime(200, &[]), Err(NotStored::NoLifetime));
        assert_eq!(lifetime(302, &[("etag", "\"a\"")]), Err(NotStored::Status), "302 needs an explicit lifetime");
        assert_eq!(lifetime(302, &[("cache-control", "max-age=5")]), Ok(Duration::from_secs(5)));
        assert_eq!(lifetime(404, &[("cache-control", "max-age=5")]), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn what_a_shared_cache_must_not_store() {
        assert_eq!(store(200, &[("cache-control", "no-store, max-age=60")]), Err(NotStored::NoStore));
        assert_eq!(store(200, &[("cache-control", "private, max-age=60")]), Err(NotStored::Private));
        assert_eq!(store(200, &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]), Err(NotStored::SetCookie));
        assert!(
            store(200, &[("cache-control", "max-age=60, private=\"set-cookie\""), ("set-cookie", "a=b")]).is_ok(),
            "stored without the cookie"
        );
        assert_eq!(store(200, &[("cache-control", "max-age=60"), ("vary", "accept, *")]), Err(NotStored::VaryAll));
        assert!(store(206, &[("cache-control", "max-age=60")]).is_ok(), "a part: its Content-Range decides");
        assert_eq!(store(304, &[("cache-control", "max-age=60")]), Err(NotStored::Status));
        assert!(store(200, &[("cache-control", "no-cache"), ("etag", "\"a\"")]).is_ok(), "stored, revalidated");
        assert!(store(200, &[("cache-control", "max-age=0, stale-if-error=60")]).is_ok());

        let pairs = headers(&[("cache-control", "max-age=60")]);
        let request = Directives::default();
        let authorized = StoreContext {
            method: &Method::GET,
            request: &request,
            authorized: true,
            default_ttl: Duration::ZERO,
            targeted: &[],
            heuristics: true,
        };
        assert_eq!(storable(authorized, StatusCode::OK, &pairs), Err(NotStored::Authorization));
        let shared = headers(&[("cache-control", "max-age=60, public")]);
        assert!(storable(authorized, StatusCode::OK, &shared).is_ok());
        let head = StoreContext { method: &Method::HEAD, ..authorized };
        assert_eq!(storable(head, StatusCode::OK, &shared), Err(NotStored::Method));
        let no_store = Directives { no_store: true, ..Directives::default() };
        let refused = StoreContext { request: &no_store, authorized: false, ..authorized };
        assert_eq!(storable(refused, StatusCode::OK, &shared), Err(NotStored::NoStore));
        let defaulted = StoreContext { default_ttl: Duration::from_secs(30), authorized: false, ..authorized };
        assert_eq!(
            storable(defaulted, StatusCode::OK, &HeaderMap::new()).map(|s| s.lifetime),
            Ok(Duration::from_secs(30))
        );
    }

    #[test]
    fn age_counts_the_larger_of_date_and_age_plus_delay() {
        let date = httpdate::parse_http_date("Mon, 23 Nov 2026 06:00:00 GMT").unwrap();
        let sent = date + Duration::from_secs(8);
        let received = date + Duration::from_secs(10);
        let with = |pairs: &[(&str, &str)]| initial_age(&headers(pairs), sent, received);
        assert_eq!(with(&[("date", "Mon, 23 Nov 2026 06:00:00 GMT")]), Duration::from_secs(10));
        assert_eq!(with(&[("date", "Mon, 23 Nov 2026 06:00:00 GMT"), ("age", "100")]), Duration::from_secs(102));
        assert_eq!(with(&[]), Duration::from_secs(2), "only the request's own delay");
    }

    #[test]
    fn request_directives_shape_what_is_fresh_enough() {
        let lifetime = Duration::from_secs(60);
        let plain = Directives::default();
        assert!(fresh_enough(Duration::from_secs(59), lifetime, &plain));
        assert!(!fresh_enough(Duration::from_secs(60), lifetime, &plain));
        let no_cache = Directives { no_cache: true, ..Directives::default() };
        assert!(!fresh_enough(Duration::ZERO, lifetime, &no_cache));
        let max_age = Directives { max_age: Some(Duration::from_secs(10)), ..Directives::default() };
        assert!(!fresh_enough(Duration::from_secs(11), lifetime, &max_age));
        let min_fresh = Directives { min_fresh: Some(Duration::from_secs(30)), ..Directives::default() };
        assert!(!fresh_enough(Duration::from_secs(40), lifetime, &min_fresh));
        let max_stale = Directives { max_stale: Some(Some(Duration::from_secs(5))), ..Directives::default() };
        assert!(fresh_enough(Duration::from_secs(64), lifetime, &max_stale));
        assert!(!fresh_enough(Duration::from_secs(66), lifetime, &max_stale));
    }
}
