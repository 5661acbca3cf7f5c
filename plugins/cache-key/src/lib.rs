//! The `cache-key` filter: sets the key the response is cached under, built from the parts of
//! the request the route chooses (see [`key`], tested natively).

pub mod key;

use key::{Config, KeyBuilder, KeySource};
use sluice_sdk::{Decision, Filter, Phases, Request, Response, export_filter};

/// One instance's recipe, and the key of the request in flight (for the response header).
pub struct CacheKey {
    builder: KeyBuilder,
    current: Option<String>,
}

impl Filter for CacheKey {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { builder: KeyBuilder::new(config)?, current: None })
    }

    fn phases(&self) -> Phases {
        if self.builder.response_header().is_some() {
            Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS
        } else {
            Phases::REQUEST_HEADERS
        }
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        let key = self.builder.key(&LiveRequest(request));
        request.set_cache_key(&key);
        self.current = self.builder.response_header().is_some().then_some(key);
        Decision::Continue
    }

    fn on_response(&mut self, _request: &Request, response: &Response) -> Decision {
        if let (Some(header), Some(key)) = (self.builder.response_header(), self.current.take())
            && let Err(reason) = response.set_header(header, &key)
        {
            sluice_sdk::log::warn(&format!("cache-key: cannot show the key in {header}: {reason}"));
        }
        Decision::Continue
    }
}

export_filter!(CacheKey);

struct LiveRequest<'a>(&'a Request<'a>);

impl KeySource for LiveRequest<'_> {
    fn method(&self) -> String {
        self.0.method()
    }
    fn host(&self) -> String {
        self.0.authority()
    }
    fn path_with_query(&self) -> String {
        self.0.path_with_query()
    }
    fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_all(name)
    }
}
