//! The `header-rewrite` filter: ordered header edits on requests and responses.
//!
//! The rule logic lives in [`rules`] and [`template`] and works on plain data, so it is tested
//! natively; this file only connects it to the live request and response.

pub mod rules;
pub mod template;

use rules::{Config, HeaderEdits, Rewriter, Subject};
use sluice_sdk::{Decision, Filter, Phases, Request, Response, export_filter};

/// One instance's compiled rules.
pub struct HeaderRewrite(Rewriter);

impl Filter for HeaderRewrite {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Rewriter::new(config).map(HeaderRewrite)
    }

    fn phases(&self) -> Phases {
        let request = if self.0.has_request_rules() { Phases::REQUEST_HEADERS } else { Phases::empty() };
        let response = if self.0.has_response_rules() { Phases::RESPONSE_HEADERS } else { Phases::empty() };
        request | response
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        let subject = LiveRequest { request, status: None };
        self.0.rewrite_request(&subject, &mut RequestHeaders(request));
        Decision::Continue
    }

    fn on_response(&mut self, request: &Request, response: &Response) -> Decision {
        let subject = LiveRequest { request, status: Some(response.status()) };
        self.0.rewrite_response(&subject, &mut ResponseHeaders(response));
        Decision::Continue
    }
}

export_filter!(HeaderRewrite);

/// What conditions and templates read: the request, and the status once there is a response.
struct LiveRequest<'a> {
    request: &'a Request<'a>,
    status: Option<u16>,
}

impl Subject for LiveRequest<'_> {
    fn method(&self) -> String {
        self.request.method()
    }
    fn path(&self) -> String {
        self.request.path()
    }
    fn host(&self) -> String {
        self.request.authority()
    }
    fn client_ip(&self) -> String {
        self.request.client_ip()
    }
    fn request_id(&self) -> String {
        self.request.request_id()
    }
    fn route(&self) -> String {
        self.request.route()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.request.header(name).map(|value| String::from_utf8_lossy(&value).into_owned())
    }
    fn status(&self) -> Option<u16> {
        self.status
    }
}

struct RequestHeaders<'a>(&'a Request<'a>);
struct ResponseHeaders<'a>(&'a Response<'a>);

/// A header the host refuses (an invalid value after templating) is logged and skipped: one
/// bad value must not fail the request.
fn refused(result: Result<(), String>, name: &str) {
    if let Err(reason) = result {
        sluice_sdk::log::warn(&format!("header-rewrite: header {name} not written: {reason}"));
    }
}

impl HeaderEdits for RequestHeaders<'_> {
    fn get_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_all(name)
    }
    fn set(&mut self, name: &str, value: &[u8]) {
        refused(self.0.set_header(name, value), name)
    }
    fn add(&mut self, name: &str, value: &[u8]) {
        refused(self.0.append_header(name, value), name)
    }
    fn remove(&mut self, name: &str) {
        self.0.remove_header(name)
    }
}

impl HeaderEdits for ResponseHeaders<'_> {
    fn get_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_all(name)
    }
    fn set(&mut self, name: &str, value: &[u8]) {
        refused(self.0.set_header(name, value), name)
    }
    fn add(&mut self, name: &str, value: &[u8]) {
        refused(self.0.append_header(name, value), name)
    }
    fn remove(&mut self, name: &str) {
        self.0.remove_header(name)
    }
}
