//! A filter that misbehaves on purpose, in the way its config names, so tests can show that the
//! host contains it.

use serde::Deserialize;
use sluice_sdk::{Decision, Filter, LocalResponse, Request, callout, clock, export_filter};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `loop`, `memory`, `trap`, `bad-header`, `callout`, `work` or `none`.
    mode: String,
    /// The upstream `callout` and `work` modes call.
    upstream: String,
    /// How long `work` computes before its callout, in milliseconds: a heavy but legitimate
    /// filter, not a hostile one.
    work_ms: u64,
}

pub struct Hostile {
    config: Config,
    hoard: Vec<Vec<u8>>,
}

impl Filter for Hostile {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { config, hoard: Vec::new() })
    }

    fn on_request(&mut self, request: &Request) -> Decision {
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
            "callout" => self.call_out(),
            "work" => {
                let until = clock::monotonic_ns() + self.config.work_ms * 1_000_000;
                let mut sum: u64 = 0;
                while clock::monotonic_ns() < until {
                    sum = std::hint::black_box(sum.wrapping_add(1));
                }
                self.call_out()
            }
            _ => Decision::Continue,
        }
    }
}

impl Hostile {
    /// Answers with what the upstream said to a callout, or 403 with the callout's error.
    fn call_out(&self) -> Decision {
        match callout::get(&self.config.upstream, "/secret") {
            Ok(response) => Decision::Respond(LocalResponse::new(200).body(response.body)),
            Err(error) => Decision::Respond(LocalResponse::new(403).body(format!("{error:?}"))),
        }
    }
}

export_filter!(Hostile);
