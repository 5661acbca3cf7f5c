//! Header hygiene on the way to the upstream and back: hop-by-hop headers, the X-Forwarded-*
//! family, `Via`, and the headers that would reveal the backend.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::ServerSettings;

/// Headers that describe one connection, never the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The protocols a request asks to switch to (`Upgrade`), when it properly asks for one.
///
/// HTTP/2 (`h2c`, `h2`) is never passed on: after the origin's `101`, the tunnel would carry
/// requests the proxy never sees, for routes it might refuse ("h2c smuggling"). Clients that
/// speak HTTP/2 reach Sluice with it directly.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_says_upgrade {
        return None;
    }
    let offered: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty() && !is_http2(protocol))
        .collect();
    if offered.is_empty() {
        return None;
    }
    HeaderValue::try_from(offered.join(", ")).ok()
}

fn is_http2(protocol: &str) -> bool {
    let name = protocol.split('/').next().unwrap_or(protocol).trim();
    name.eq_ignore_ascii_case("h2c") || name.eq_ignore_ascii_case("h2")
}

/// Whether `chosen` (a `101`'s `Upgrade`) is one of the protocols `asked` offered.
pub fn offered_protocol(asked: Option<&HeaderValue>, chosen: &HeaderValue) -> bool {
    let (Some(asked), Ok(chosen)) = (asked.and_then(|asked| asked.to_str().ok()), chosen.to_str()) else {
        return false;
    };
    let chosen = chosen.trim();
    !is_http2(chosen) && asked.split(',').any(|protocol| protocol.trim().eq_ignore_ascii_case(chosen))
}

/// The client's address as Sluice sees it: the peer's, unless the peer is a trusted proxy; then
/// `X-Forwarded-For` is read from the right (the hop nearest to Sluice), past every trusted
/// proxy, and the first address that is not one is the client. An entry that is not an address
/// ends the walk: what lies left of it was written by someone no trusted proxy vouches for, so
/// the last trusted hop is taken as the client.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[ipnet::IpNet]) -> IpAddr {
    let trusted = |address: &IpAddr| trusted_proxies.iter().any(|net| net.contains(address));
    if !trusted(&peer) || !headers.contains_key(X_FORWARDED_FOR) {
        return peer;
    }
    let values: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
    let mut nearest = peer;
    for value in values.into_iter().rev() {
        let Ok(text) = value.to_str() else { return nearest };
        for entry in text.rsplit(',') {
            let Some(address) = parse_forwarded_address(entry) else { return nearest };
            if !trusted(&address) {
                return address;
            }
            nearest = address;
        }
    }
    nearest
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip())
}

/// What the forwarding headers need to know about the client side.
pub struct ClientSide<'a> {
    /// The peer's address.
    pub peer: IpAddr,
    /// `http` or `https`, as the client connected.
    pub scheme: &'static str,
    /// The host the client asked for, port included, as received.
    pub host: Option<&'a str>,
    /// The peer's address as a header value, when the connection made it already.
    pub peer_header: Option<&'a HeaderValue>,
}

/// Rewrites request headers for the upstream: drops hop-by-hop headers, then sets
/// X-Forwarded-For/-Proto/-Host and `Via`. Incoming forwarding headers are kept (and added to)
/// only when the peer is a trusted proxy; from anyone else they could be forged, so they are
/// replaced.
pub fn prepare_upstream_request(headers: &mut HeaderMap, client: &ClientSide<'_>, settings: &ServerSettings) {
    let upgrade = requested_upgrade(headers);
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }

    let trusted = settings.trusted_proxies.iter().any(|net| net.contains(&client.peer));
    match (headers.get(X_FORWARDED_FOR).filter(|_| trusted).and_then(|value| value.to_str().ok()), client.peer_header) {
        (Some(earlier), _) => {
            let forwarded_for = format!("{earlier}, {}", client.peer);
            set_text(headers, X_FORWARDED_FOR, &forwarded_for);
        }
        // The usual case: the connection's own address, made once per connection.
        (None, Some(peer)) => {
            headers.insert(X_FORWARDED_FOR, peer.clone());
        }
        (None, None) => set_text(headers, X_FORWARDED_FOR, &client.peer.to_string()),
    }
    if !(trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
    }
    if !(trusted && headers.contains_key(X_FORWARDED_HOST)) {
        match client.host {
            Some(host) => set_text(headers, X_FORWARDED_HOST, host),
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    if !trusted {
        headers.remove(FORWARDED);
    }
    append_via(headers, &settings.via_name);
}

/// Rewrites response headers for the client: drops hop-by-hop headers (except on a protocol
/// switch, which needs `Connection` and `Upgrade`), hides backend-revealing headers, adds `Via`.
pub fn prepare_client_response(headers: &mut HeaderMap, switching_protocols: bool, settings: &ServerSettings) {
    if switching_protocols {
        let upgrade = headers.get(header::UPGRADE).cloned();
        remove_hop_by_hop(headers);
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
    } else {
        remove_hop_by_hop(headers);
    }
    for name in &settings.hide_headers {
        headers.remove(name);
    }
    append_via(headers, &settings.via_name);
}

fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    // One combined value keeps the chain readable and in order.
    let combined = match headers.get(header::VIA).and_then(|value| value.to_str().ok()) {
        Some(earlier) => HeaderValue::try_from(format!("{earlier}, {}", via.to_str().unwrap_or("sluice"))).ok(),
        None => None,
    };
    headers.insert(header::VIA, combined.unwrap_or_else(|| via.clone()));
}

fn set_text(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::try_from(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snapshot;

    fn settings(trusted: &str) -> ServerSettings {
        let toml = format!("[server]\ntrusted_proxies = [{trusted}]\n[[listener]]\nbind = \"127.0.0.1:0\"\n");
        Snapshot::from_toml(&crate::config::Services::for_tests(), &toml).unwrap().server
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (HeaderName::try_from(*name).unwrap(), value.parse().unwrap())).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("accept"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut map =
            headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https"), ("forwarded", "for=6.6.6.6")]);
        let client = ClientSide {
            peer: "192.0.2.7".parse().unwrap(),
            scheme: "http",
            host: Some("example.com"),
            peer_header: None,
        };
        prepare_upstream_request(&mut map, &client, &settings("\"10.0.0.0/8\""));
        assert_eq!(map["x-forwarded-for"], "192.0.2.7");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "example.com");
        assert!(!map.contains_key("forwarded"));
        assert_eq!(map["via"], "1.1 sluice");
    }

    #[test]
    fn trusted_forwarding_headers_are_extended() {
        let mut map =
            headers(&[("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https"), ("via", "1.1 edge")]);
        let client = ClientSide {
            peer: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            host: Some("example.com"),
            peer_header: None,
        };
        prepare_upstream_request(&mut map, &client, &settings("\"10.0.0.0/8\""));
        assert_eq!(map["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["via"], "1.1 edge, 1.1 sluice");
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let client = |peer: &str, forwarded: &[&str]| {
            let map: HeaderMap = forwarded.iter().map(|value| (X_FORWARDED_FOR, value.parse().unwrap())).collect();
            client_address(peer.parse().unwrap(), &map, &trusted).to_string()
        };
        assert_eq!(client("192.0.2.7", &["203.0.113.9"]), "192.0.2.7", "an untrusted peer's header is ignored");
        assert_eq!(client("10.0.0.1", &[]), "10.0.0.1");
        assert_eq!(client("10.0.0.1", &["203.0.113.9"]), "203.0.113.9");
        assert_eq!(
            client("10.0.0.1", &["6.6.6.6, 203.0.113.9, 10.0.0.2"]),
            "203.0.113.9",
            "forged entries on the left"
        );
        assert_eq!(client("10.0.0.1", &["6.6.6.6", "203.0.113.9"]), "203.0.113.9", "several headers in order");
        assert_eq!(client("10.0.0.1", &["10.0.0.3, 10.0.0.2"]), "10.0.0.3", "all trusted: the farthest");
        assert_eq!(client("10.0.0.1", &["203.0.113.9, garbage, 10.0.0.2"]), "10.0.0.2", "garbage ends the walk");
        assert_eq!(client("10.0.0.1", &["[2001:db8::1]:4711"]), "2001:db8::1");
    }

    #[test]
    fn upgrade_survives_hygiene() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let client = ClientSide { peer: "127.0.0.1".parse().unwrap(), scheme: "http", host: None, peer_header: None };
        prepare_upstream_request(&mut map, &client, &settings(""));
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
    }

    #[test]
    fn http2_upgrades_are_never_passed_on() {
        let asked = |upgrade: &str| {
            requested_upgrade(&headers(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", upgrade)]))
        };
        assert_eq!(asked("h2c"), None);
        assert_eq!(asked("H2C, websocket").unwrap(), "websocket");
        assert_eq!(asked("websocket").unwrap(), "websocket");
        let offered = HeaderValue::from_static("websocket");
        assert!(offered_protocol(Some(&offered), &HeaderValue::from_static("WebSocket")));
        assert!(!offered_protocol(Some(&offered), &HeaderValue::from_static("h2c")));
        assert!(!offered_protocol(None, &HeaderValue::from_static("websocket")));
    }

    #[test]
    fn backend_headers_are_hidden() {
        let mut map = headers(&[("server", "gunicorn"), ("x-powered-by", "PHP"), ("content-type", "text/plain")]);
        prepare_client_response(&mut map, false, &settings(""));
        assert!(!map.contains_key("server"));
        assert!(!map.contains_key("x-powered-by"));
        assert!(map.contains_key("content-type"));
    }
}
