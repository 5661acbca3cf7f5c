//! A filter that misbehaves on purpose, in the way its config names, so tests can show that the
//! host contains it.

use serde::Deserialize;
use sluice_sdk::{
    BodyAction, Decision, Filter, LocalResponse, Phases, Request, Response, callout, clock, export_filter, kv, log,
    metrics,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What to do: `loop`, `memory`, `trap`, `bad-header`, `callout`, `work`, `metric-flood`,
    /// `metric-forge`, `log-flood`, `kv-flood`, `kv-huge`, `header-flood`, `header-huge`,
    /// `connect`, `hop-by-hop`, `no-content`, `body-trap`, `stall-callout` or `none`.
    mode: String,
    /// The upstream `callout`, `work` and `stall-callout` call.
    upstream: String,
    /// How long `work` and `stall-callout` compute before their callout, in milliseconds: for
    /// `work` a heavy but legitimate filter, not a hostile one.
    work_ms: u64,
    /// How many series, lines, keys or headers the flood modes write per request.
    count: u32,
}

pub struct Hostile {
    config: Config,
    hoard: Vec<Vec<u8>>,
    /// Requests seen, so that floods use fresh names every time.
    served: u64,
}

impl Filter for Hostile {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { config, hoard: Vec::new(), served: 0 })
    }

    fn phases(&self) -> Phases {
        match self.config.mode.as_str() {
            "no-content" => Phases::RESPONSE_HEADERS,
            "body-trap" => Phases::RESPONSE_BODY,
            _ => Phases::REQUEST_HEADERS,
        }
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        self.served += 1;
        let served = self.served;
        let count = self.config.count;
        match self.config.mode.as_str() {
            "loop" => {
                let mut spins: u64 = 0;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "memory" => loop {
                // 1 MiB at a time, touched so the pages are real, never freed.
                self.hoard.push(vec![1; 1 << 20]);
            },
            "trap" => panic!("hostile filter gave up on purpose"),
            "bad-header" => {
                let name = request.set_header("bad header name", "x").err().unwrap_or_default();
                let value = request.set_header("x-bad-value", "line\nbreak").err().unwrap_or_default();
                let framing = request.set_header("content-length", "0").err().unwrap_or_default();
                let _ = request.set_header("x-refused-name", name);
                let _ = request.set_header("x-refused-value", value);
                let _ = request.set_header("x-refused-framing", framing);
                Decision::Continue
            }
            "callout" => self.call_out(0),
            "work" => {
                spin_for(self.config.work_ms);
                self.call_out(0)
            }
            "stall-callout" => {
                // Long enough to become a long call and take a lane, then wait on a silent
                // upstream for as long as the host allows.
                spin_for(self.config.work_ms);
                self.call_out(u32::MAX)
            }
            "metric-flood" => {
                for index in 0..count {
                    let fresh = format!("{served}-{index}");
                    metrics::counter_add("flood", &[("id", &fresh)], 1);
                }
                Decision::Continue
            }
            "metric-forge" => {
                // A label key that would close the label set and forge a series, a duplicate key,
                // and a key posing as the host's.
                metrics::counter_add("forged", &[("x\"} 1\nsluice_upstream_server_healthy{server", "1")], 1);
                metrics::counter_add("forged", &[("a", "1"), ("a", "2")], 1);
                metrics::counter_add("forged", &[("tenant", "victim")], 1);
                metrics::counter_add("fine", &[("code", "200")], 1);
                Decision::Continue
            }
            "log-flood" => {
                for index in 0..count {
                    log::info(&format!(
                        "line {index}\nINFO sluice::access: request route=\"admin\" status=200 \u{1b}[2J{}",
                        "x".repeat(64 * 1024)
                    ));
                }
                Decision::Continue
            }
            "kv-flood" => {
                let mut refused = 0;
                for index in 0..count {
                    if kv::set(&format!("{served}-{index}"), "v", None).is_err() {
                        refused += 1;
                    }
                }
                Decision::Respond(LocalResponse::new(200).body(format!("refused {refused}")))
            }
            "kv-huge" => {
                let value = vec![7u8; 48 << 20];
                let answer = match kv::set("huge", &value, None) {
                    Ok(()) => "stored".to_owned(),
                    Err(error) => format!("{error:?}"),
                };
                Decision::Respond(LocalResponse::new(200).body(answer))
            }
            "header-flood" => {
                let mut refused = 0;
                for index in 0..count {
                    if request.set_header(&format!("x-flood-{index}"), "v").is_err() {
                        refused += 1;
                    }
                }
                // Keep ten, so that the upstream gets a head it accepts.
                for index in 10..count.min(1000) {
                    request.remove_header(&format!("x-flood-{index}"));
                }
                let _ = request.set_header("x-flood-refused", refused.to_string());
                Decision::Continue
            }
            "header-huge" => {
                let refused = request.set_header("x-huge", vec![b'a'; 10 << 20]).is_err();
                let _ = request.set_header("x-huge-refused", refused.to_string());
                Decision::Continue
            }
            "connect" => {
                let refused = request.set_method("CONNECT").err().unwrap_or_default();
                let _ = request.set_header("x-method-refused", refused);
                Decision::Continue
            }
            "hop-by-hop" => Decision::Respond(
                LocalResponse::new(200)
                    .header("upgrade", "h2c")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-connection", "keep-alive")
                    .header("te", "trailers")
                    .header("trailer", "x-checksum")
                    .header("connection", "x-secret")
                    .header("x-secret", "named by connection")
                    .header("x-kept", "yes")
                    .body("local"),
            ),
            _ => Decision::Continue,
        }
    }

    fn on_response(&mut self, _request: &Request, response: &Response) -> Decision {
        if self.config.mode == "no-content" {
            let _ = response.set_status(204);
        }
        Decision::Continue
    }

    fn on_response_body(&mut self, _: &Request, _: &Response, _: Vec<u8>, _: bool) -> BodyAction {
        panic!("hostile filter broke the response body on purpose");
    }
}

/// Computes for `ms` milliseconds.
fn spin_for(ms: u64) {
    let until = clock::monotonic_ns() + ms * 1_000_000;
    let mut sum: u64 = 0;
    while clock::monotonic_ns() < until {
        sum = std::hint::black_box(sum.wrapping_add(1));
    }
}

impl Hostile {
    /// Answers with what the upstream said to a callout, or 403 with the callout's error.
    fn call_out(&self, timeout_ms: u32) -> Decision {
        let request = callout::CalloutRequest {
            method: "GET".into(),
            path_with_query: "/secret".into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms,
        };
        match callout::send(&self.config.upstream, &request) {
            Ok(response) => Decision::Respond(LocalResponse::new(200).body(response.body)),
            Err(error) => Decision::Respond(LocalResponse::new(403).body(format!("{error:?}"))),
        }
    }
}

export_filter!(Hostile);
