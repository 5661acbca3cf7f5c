//! The `cors` filter: answers preflights itself and marks responses to allowed origins. The
//! policy is in [`policy`], tested natively; this file connects it to the request.

pub mod policy;

use policy::{Config, Policy, Verdict};
use sluice_sdk::{Decision, Filter, LocalResponse, Request, Response, export_filter};

/// One instance: the policy, and the headers owed to the response of the request in flight.
pub struct Cors {
    policy: Policy,
    pending: Vec<(String, String)>,
}

impl Filter for Cors {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { policy: Policy::new(config)?, pending: Vec::new() })
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        self.pending.clear();
        let verdict = self.policy.check(
            &request.method(),
            request.header_str("origin").as_deref(),
            request.header_str("access-control-request-method").as_deref(),
            request.header_str("access-control-request-headers").as_deref(),
        );
        match verdict {
            Verdict::Untouched => Decision::Continue,
            Verdict::Actual(headers) => {
                self.pending = headers;
                Decision::Continue
            }
            Verdict::PreflightAllowed(headers) => {
                let response = headers
                    .into_iter()
                    .fold(LocalResponse::new(204), |response, (name, value)| response.header(&name, value));
                Decision::Respond(response)
            }
            Verdict::PreflightRefused(_) if self.policy.forwards_refused_preflights() => Decision::Continue,
            Verdict::PreflightRefused(why) => {
                sluice_sdk::log::info(&format!("cors: preflight refused: {why}"));
                Decision::Respond(
                    LocalResponse::new(403)
                        .header("content-type", "text/plain; charset=utf-8")
                        .header("vary", "Origin")
                        .body(format!("CORS preflight refused: {why}\n")),
                )
            }
        }
    }

    fn on_response(&mut self, _request: &Request, response: &Response) -> Decision {
        for (name, value) in self.pending.drain(..) {
            // Vary adds to what the upstream said; the access-control headers are ours alone.
            let written =
                if name == "vary" { response.append_header(&name, &value) } else { response.set_header(&name, &value) };
            if let Err(reason) = written {
                sluice_sdk::log::warn(&format!("cors: cannot set {name}: {reason}"));
            }
        }
        Decision::Continue
    }
}

export_filter!(Cors);
