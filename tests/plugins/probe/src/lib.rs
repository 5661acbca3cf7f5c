//! A filter that shows what it saw: it tags requests and responses with its name in every phase
//! it was configured for, so tests can see order, phases and decisions from the outside.

use serde::Deserialize;
use sluice_sdk::{BodyAction, Decision, Filter, LocalResponse, Phases, Request, Response, export_filter, kv, metrics};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name appended to `x-chain` on the request and `x-chain-response` on the response.
    tag: String,
    /// Answer 403 from the request phase for this path.
    deny_path: Option<String>,
    /// Answer 418 from the response phase when the upstream answered this status.
    replace_status: Option<u16>,
    /// Rewrite this path to `/rewritten` in the request phase.
    rewrite_path: Option<String>,
    /// Upper-case the request body (buffered) and report its size in `x-request-body-bytes`.
    upper_request_body: bool,
    /// Deny request bodies containing this text.
    deny_body: Option<String>,
    /// Upper-case the response body as it streams.
    upper_response_body: bool,
    /// Append this to the buffered response body and set `x-buffered` on the head.
    append_response_body: Option<String>,
    /// Count requests in the tenant's key-value namespace and report in `x-count`.
    count: bool,
    /// Refuse the config (to test that refusals stop the route from loading).
    refuse: bool,
    /// Key-value round trip: `set` (when given) stores under `key`, then `x-kv-value` reports what
    /// the key holds (`none` when absent, `error: ...` when the store failed).
    kv_echo: Option<KvEcho>,
    /// Report the client as the host sees it: `x-client-ip`, `x-client-country`,
    /// `x-client-asn` on the request.
    locate: bool,
    /// Add an attribute and an event to the request call's span, and report the trace id in
    /// `x-trace-id`.
    trace: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEcho {
    key: String,
    /// Take the key from this request header instead of `key`.
    key_from_header: Option<String>,
    set: Option<String>,
    /// Read the value from this request header instead of `set`.
    set_from_header: Option<String>,
}

pub struct Probe {
    config: Config,
    chunks: usize,
    /// Requests this instance has seen: 1, 2, 3... when warm instances are reused.
    served: u64,
}

impl Filter for Probe {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.refuse {
            return Err("refused on purpose".into());
        }
        Ok(Self { config, chunks: 0, served: 0 })
    }

    fn phases(&self) -> Phases {
        let mut phases = Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS;
        if self.config.upper_request_body || self.config.deny_body.is_some() {
            phases = phases | Phases::REQUEST_BODY;
        }
        if self.config.upper_response_body {
            phases = phases | Phases::RESPONSE_BODY;
        }
        if self.config.append_response_body.is_some() {
            phases = phases | Phases::RESPONSE_BODY | Phases::BUFFER_RESPONSE_BODY;
        }
        phases
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        self.chunks = 0;
        self.served += 1;
        let _ = request.set_header(&format!("x-{}-instance-requests", self.config.tag), self.served.to_string());
        if self.config.deny_path.as_deref() == Some(request.path().as_str()) {
            return Decision::Respond(
                LocalResponse::new(403)
                    .header("content-type", "text/plain")
                    .body(format!("denied by {}\n", self.config.tag)),
            );
        }
        if self.config.rewrite_path.as_deref() == Some(request.path().as_str()) {
            let _ = request.set_path_with_query("/rewritten");
        }
        let _ = request.append_header("x-chain", &self.config.tag);
        if self.config.trace {
            sluice_sdk::trace::set_attribute("probe.tag", &self.config.tag);
            sluice_sdk::trace::add_event("probe.seen", &[("path", &request.path_with_query())]);
            if let Some(id) = sluice_sdk::trace::trace_id() {
                let _ = request.set_header("x-trace-id", id);
            }
        }
        if let Some(echo) = &self.config.kv_echo {
            let key = echo.key_from_header.as_deref().and_then(|name| request.header_str(name)).unwrap_or(echo.key.clone());
            let value = echo.set_from_header.as_deref().and_then(|name| request.header_str(name)).or(echo.set.clone());
            if let Some(value) = value {
                let _ = sluice_sdk::kv::set(&key, value, None);
            }
            let report = match sluice_sdk::kv::get(&key) {
                Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                Ok(None) => "none".to_owned(),
                Err(error) => format!("error: {error:?}"),
            };
            let _ = request.set_header("x-kv-value", report);
        }
        if self.config.locate {
            let location = sluice_sdk::client::location();
            let _ = request.set_header("x-client-ip", request.client_ip());
            let _ = request.set_header("x-client-country", location.country.unwrap_or_else(|| "unknown".into()));
            let asn = location.asn.map_or_else(|| "unknown".to_owned(), |asn| asn.to_string());
            let _ = request.set_header("x-client-asn", asn);
        }
        if let Some(identity) = request.client_identity() {
            let _ = request.set_header("x-client-identity", identity);
        }
        if self.config.count {
            let count = kv::increment("requests", 1, None).unwrap_or(-1);
            let _ = request.set_header("x-count", count.to_string());
            metrics::counter_add("probe_requests", &[("tag", &self.config.tag)], 1);
        }
        Decision::Continue
    }

    fn on_request_body(&mut self, request: &Request, body: Vec<u8>, _end_of_stream: bool) -> BodyAction {
        if let Some(needle) = &self.config.deny_body
            && String::from_utf8_lossy(&body).contains(needle.as_str())
        {
            return BodyAction::Respond(LocalResponse::new(400).body(format!("body refused by {}\n", self.config.tag)));
        }
        let _ = request.set_header("x-request-body-bytes", body.len().to_string());
        BodyAction::Replace(body.to_ascii_uppercase())
    }

    fn on_response(&mut self, request: &Request, response: &Response) -> Decision {
        if self.config.replace_status == Some(response.status()) {
            return Decision::Respond(LocalResponse::new(418).body(format!("replaced by {}\n", self.config.tag)));
        }
        let _ = response.append_header("x-chain-response", &self.config.tag);
        // The request can be read in the response phase, not changed.
        let refused = request.set_header("x-too-late", "1").is_err();
        let _ = response.set_header(&format!("x-{}-saw-request-readonly", self.config.tag), refused.to_string());
        Decision::Continue
    }

    fn on_response_body(&mut self, _request: &Request, response: &Response, body: Vec<u8>, end_of_stream: bool) -> BodyAction {
        if let Some(suffix) = &self.config.append_response_body {
            let _ = response.set_header("x-buffered", "yes");
            let mut body = body;
            body.extend_from_slice(suffix.as_bytes());
            return BodyAction::Replace(body);
        }
        if !body.is_empty() {
            self.chunks += 1;
        }
        if end_of_stream {
            let mut last = body.to_ascii_uppercase();
            last.extend_from_slice(format!("[{} chunks]", self.chunks).as_bytes());
            return BodyAction::Replace(last);
        }
        BodyAction::Replace(body.to_ascii_uppercase())
    }
}

export_filter!(Probe);
