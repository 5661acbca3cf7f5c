//! The `api-key` filter: a request passes with a known key, and the upstream learns which
//! consumer sent it. The logic is in [`keys`], tested natively.

pub mod keys;

use keys::{Config, KeyTable, Outcome};
use sluice_sdk::{Decision, Filter, LocalResponse, Phases, Request, export_filter, metrics};

/// One instance's key table and settings.
pub struct ApiKey {
    table: KeyTable,
    config: Config,
}

impl Filter for ApiKey {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let table = KeyTable::new(&config.keys, config.allowed_consumers.clone())?;
        Ok(Self { table, config: Config { header: config.header.to_ascii_lowercase(), ..config } })
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        // Whatever the client says about its consumer is never trusted.
        request.remove_header(&self.config.consumer_header);
        let from_header = request.header(&self.config.header);
        let from_query = match (&from_header, &self.config.query_param) {
            (None, Some(param)) => keys::query_value(&request.path_with_query(), param),
            _ => None,
        };
        let presented = from_header.as_deref().or(from_query.as_deref().map(str::as_bytes));
        match self.table.check(presented) {
            Outcome::Allowed { consumer } => {
                if self.config.hide_credentials {
                    request.remove_header(&self.config.header);
                    if let (Some(_), Some(param)) = (&from_query, &self.config.query_param) {
                        let _ =
                            request.set_path_with_query(&keys::without_query_param(&request.path_with_query(), param));
                    }
                }
                let _ = request.set_header(&self.config.consumer_header, consumer);
                metrics::counter_add("api_key_requests_total", &[("consumer", consumer), ("result", "allowed")], 1);
                Decision::Continue
            }
            Outcome::Unauthenticated(why) => {
                metrics::counter_add("api_key_requests_total", &[("consumer", ""), ("result", "unauthenticated")], 1);
                Decision::Respond(
                    LocalResponse::new(401)
                        .header("www-authenticate", format!("ApiKey realm=\"{}\"", self.config.realm))
                        .header("content-type", "text/plain; charset=utf-8")
                        .body(format!("{why} (request {})\n", request.request_id())),
                )
            }
            Outcome::Forbidden { consumer } => {
                metrics::counter_add("api_key_requests_total", &[("consumer", consumer), ("result", "forbidden")], 1);
                Decision::Respond(
                    LocalResponse::new(403).header("content-type", "text/plain; charset=utf-8").body(format!(
                        "consumer {consumer} may not use this route (request {})\n",
                        request.request_id()
                    )),
                )
            }
        }
    }
}

export_filter!(ApiKey);
