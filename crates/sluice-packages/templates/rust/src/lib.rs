//! filter-template: a Sluice filter.

use serde::Deserialize;
use sluice_sdk::{Decision, Filter, LocalResponse, Request, Response, export_filter};

/// The route's config for this filter.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Requests without this header are refused.
    pub required_header: Option<String>,
    /// Added to every response.
    pub response_header: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { required_header: None, response_header: "filter-template".into() }
    }
}

pub struct FilterTemplate {
    config: Config,
}

impl Filter for FilterTemplate {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { config })
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        match &self.config.required_header {
            Some(name) if request.header(name).is_none() => {
                Decision::Respond(LocalResponse::new(400).body(format!("missing header {name}\n")))
            }
            _ => Decision::Continue,
        }
    }

    fn on_response(&mut self, _request: &Request, response: &Response) -> Decision {
        let _ = response.set_header("x-filtered-by", &self.config.response_header);
        Decision::Continue
    }
}

export_filter!(FilterTemplate);
