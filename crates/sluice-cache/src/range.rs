//! Byte ranges answered from a stored complete response (RFC 9110 section 14): which single range
//! a `Range` header asks for, whether `If-Range` still allows it, and what part of the body it
//! selects. Several ranges in one request are answered with the whole response, as RFC 9110
//! allows, rather than a `multipart/byteranges` body.

use std::ops::Range;

use http::header::{self, HeaderMap};

/// What a request's `Range` makes of a stored body of `length` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable `Range`: the whole response.
    Whole,
    /// `206` with these bytes.
    Partial(Range<usize>),
    /// `416`: no byte of the body is in the range.
    Unsatisfiable,
}

/// The part of a representation a stored `206` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Offset of its first byte in the whole representation.
    pub start: usize,
    /// How many bytes it says it holds; a body of another length is not stored.
    pub length: usize,
    /// Length of the whole representation.
    pub complete: usize,
}

impl Part {
    /// The part a `206`'s `Content-Range` (`bytes 4-9/10`) describes, when it is one range of
    /// a representation of known length.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(header::CONTENT_RANGE).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return None };
        let (unit, rest) = value.to_str().ok()?.trim().split_once(' ')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let (span, complete) = rest.trim().split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let [first, last, complete] = [first, last, complete].map(|text| text.trim().parse::<usize>().ok());
        let (first, last, complete) = (first?, last?, complete?);
        (first <= last && last < complete).then(|| Self { start: first, length: last - first + 1, complete })
    }
}

/// Decides how a request for a stored part of a representation is answered: `held` is the range
/// of the whole the stored bytes cover. `None` when the request asks for what is not held.
pub fn answer_from_part(request: &HeaderMap, stored: &HeaderMap, part: Part, held: usize) -> Option<RangeAnswer> {
    let answer = answer(request, stored, part.complete);
    match &answer {
        RangeAnswer::Partial(wanted) if wanted.start >= part.start && wanted.end <= part.start + held => Some(answer),
        _ => None,
    }
}

/// Decides how a request for a stored 200 response with `stored` headers and a body of `length`
/// bytes is answered.
pub fn answer(request: &HeaderMap, stored: &HeaderMap, length: usize) -> RangeAnswer {
    let mut ranges = request.get_all(header::RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else { return RangeAnswer::Whole };
    let Ok(range) = range.to_str() else { return RangeAnswer::Whole };
    if !if_range_holds(request, stored) {
        return RangeAnswer::Whole;
    }
    let Some(spec) = strip_unit(range) else { return RangeAnswer::Whole };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    match parse_spec(spec.trim(), length) {
        Some(Some(selected)) => RangeAnswer::Partial(selected),
        Some(None) => RangeAnswer::Unsatisfiable,
        None => RangeAnswer::Whole,
    }
}

/// The range set after `bytes=`, the unit compared case-insensitively.
fn strip_unit(range: &str) -> Option<&str> {
    let (unit, spec) = range.trim().split_once('=')?;
    unit.trim().eq_ignore_ascii_case("bytes").then_some(spec)
}

/// One range spec against `length` bytes: `None` when it does not parse (the header is then
/// ignored), `Some(None)` when it parses but selects nothing.
fn parse_spec(spec: &str, length: usize) -> Option<Option<Range<usize>>> {
    let (first, last) = spec.split_once('-')?;
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())).then(|| text.parse().unwrap_or(u64::MAX))
    };
    let length = length as u64;
    let (start, end) = if first.trim().is_empty() {
        // A suffix: the last N bytes.
        let suffix = number(last)?;
        if suffix == 0 {
            return Some(None);
        }
        (length.saturating_sub(suffix), length)
    } else {
        let start = number(first)?;
        let end = if last.trim().is_empty() {
            length
        } else {
            let last = number(last)?;
            // "5-2" is not a valid range: the header is ignored.
            if last < start {
                return None;
            }
            last.saturating_add(1).min(length)
        };
        (start, end)
    };
    if start >= length || start >= end {
        return Some(None);
    }
    Some(Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
}

/// `If-Range`: the range is answered only when the stored response is still the one the client
/// has, by a strong entity tag or an exact `Last-Modified` date.
fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(header::IF_RANGE).and_then(|value| value.to_str().ok()) else {
        return true;
    };
    let condition = condition.trim();
    if condition.starts_with('"') {
        let etag = stored.get(header::ETAG).and_then(|value| value.to_str().ok()).map(str::trim);
        return etag.is_some_and(|etag| !etag.starts_with("W/") && etag == condition);
    }
    let stored_date = stored.get(header::LAST_MODIFIED).and_then(|value| value.to_str().ok());
    match (stored_date.and_then(|date| httpdate::parse_http_date(date).ok()), httpdate::parse_http_date(condition)) {
        (Some(stored), Ok(condition)) => stored == condition,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ask(range: &str) -> RangeAnswer {
        answer(&with(&[("range", range)]), &HeaderMap::new(), 10)
    }

    #[test]
    fn single_ranges_select_their_bytes() {
        assert_eq!(ask("bytes=0-4"), RangeAnswer::Partial(0..5));
        assert_eq!(ask("bytes=5-"), RangeAnswer::Partial(5..10));
        assert_eq!(ask("bytes=-3"), RangeAnswer::Partial(7..10));
        assert_eq!(ask("bytes=-30"), RangeAnswer::Partial(0..10), "a suffix longer than the body is all of it");
        assert_eq!(ask("bytes=8-100"), RangeAnswer::Partial(8..10), "the end is clipped to the body");
        assert_eq!(ask("BYTES = 1-1"), RangeAnswer::Partial(1..2));
    }

    #[test]
    fn what_selects_nothing_is_unsatisfiable_and_what_does_not_parse_is_ignored() {
        assert_eq!(ask("bytes=10-"), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=5-2"), RangeAnswer::Whole);
        assert_eq!(ask("bytes=a-b"), RangeAnswer::Whole);
        assert_eq!(ask("items=0-4"), RangeAnswer::Whole);
        assert_eq!(ask("bytes=0-1,4-5"), RangeAnswer::Whole, "several ranges get the whole body");
        assert_eq!(ask("bytes=99999999999999999999999-"), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn stored_parts_answer_the_ranges_inside_them() {
        let stored = with(&[("content-range", "bytes 4-8/10")]);
        let part = Part::of(&stored).unwrap();
        assert_eq!(part, Part { start: 4, length: 5, complete: 10 });
        let ask = |range: &str| answer_from_part(&with(&[("range", range)]), &stored, part, 5);
        assert_eq!(ask("bytes=6-8"), Some(RangeAnswer::Partial(6..9)));
        assert_eq!(ask("bytes=4-"), None, "byte 9 is not held");
        assert_eq!(ask("bytes=-7"), None, "a suffix reaching before the part");
        assert_eq!(ask("bytes=0-1"), None);
        assert_eq!(answer_from_part(&HeaderMap::new(), &stored, part, 5), None, "the whole is not held");
        for invalid in ["bytes 5-4/10", "bytes 0-10/10", "bytes 0-4/*", "items 0-4/10", "bytes */10"] {
            assert_eq!(Part::of(&with(&[("content-range", invalid)])), None, "{invalid}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let stored = with(&[("etag", "\"v1\""), ("last-modified", "Mon, 23 Nov 2026 06:00:00 GMT")]);
        let request = |condition: &str| with(&[("range", "bytes=0-1"), ("if-range", condition)]);
        assert_eq!(answer(&request("\"v1\""), &stored, 10), RangeAnswer::Partial(0..2));
        assert_eq!(answer(&request("\"v2\""), &stored, 10), RangeAnswer::Whole);
        assert_eq!(answer(&request("Mon, 23 Nov 2026 06:00:00 GMT"), &stored, 10), RangeAnswer::Partial(0..2));
        assert_eq!(answer(&request("Mon, 23 Nov 2026 07:00:00 GMT"), &stored, 10), RangeAnswer::Whole);
        let weak = with(&[("etag", "W/\"v1\"")]);
        assert_eq!(answer(&request("W/\"v1\""), &weak, 10), RangeAnswer::Whole);
    }
}
