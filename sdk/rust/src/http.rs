//! Typed handles to the live request and response, and local responses.

use crate::bindings::sluice::filter::http as handles;
use crate::bindings::sluice::filter::types as wit;

/// The request being served. Reads go to the host each time; nothing is copied until asked for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a>(&'a handles::Request);

impl<'a> Request<'a> {
    pub(crate) fn from_handle(handle: &'a handles::Request) -> Self {
        Self(handle)
    }

    /// The method, such as `GET`.
    pub fn method(&self) -> String {
        self.0.method()
    }

    /// Changes the method.
    pub fn set_method(&self, method: &str) -> Result<(), String> {
        self.0.set_method(method)
    }

    /// Path and query, such as `/users?id=7`.
    pub fn path_with_query(&self) -> String {
        self.0.path_with_query()
    }

    /// The path without the query.
    pub fn path(&self) -> String {
        let mut path = self.0.path_with_query();
        if let Some(query) = path.find('?') {
            path.truncate(query);
        }
        path
    }

    /// Changes path and query; must start with `/`.
    pub fn set_path_with_query(&self, value: &str) -> Result<(), String> {
        self.0.set_path_with_query(value)
    }

    /// The host the client asked for.
    pub fn authority(&self) -> String {
        self.0.authority()
    }

    /// The first value of a header, as bytes.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.header(name)
    }

    /// The first value of a header, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.0.header(name).and_then(|value| String::from_utf8(value).ok())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_all(name)
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.0.headers()
    }

    /// Sets a header, replacing its values; refused for an invalid name or value.
    pub fn set_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.0.set_header(name, value.as_ref())
    }

    /// Adds a header value.
    pub fn append_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.0.append_header(name, value.as_ref())
    }

    /// Removes a header.
    pub fn remove_header(&self, name: &str) {
        self.0.remove_header(name)
    }

    /// The client's IP address.
    pub fn client_ip(&self) -> String {
        self.0.client_ip()
    }

    /// The identity in the client's verified TLS certificate, on listeners that ask for one.
    pub fn client_identity(&self) -> Option<String> {
        self.0.client_identity()
    }

    /// The request id.
    pub fn request_id(&self) -> String {
        self.0.request_id()
    }

    /// The route's name.
    pub fn route(&self) -> String {
        self.0.route()
    }

    /// Sets the key under which the response is cached.
    pub fn set_cache_key(&self, key: &str) {
        self.0.set_cache_key(key)
    }
}

/// The response on its way to the client.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a>(&'a handles::Response);

impl<'a> Response<'a> {
    pub(crate) fn from_handle(handle: &'a handles::Response) -> Self {
        Self(handle)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    /// Changes the status code.
    pub fn set_status(&self, status: u16) -> Result<(), String> {
        self.0.set_status(status)
    }

    /// The first value of a header, as bytes.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.header(name)
    }

    /// The first value of a header, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.0.header(name).and_then(|value| String::from_utf8(value).ok())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.header_all(name)
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.0.headers()
    }

    /// Sets a header, replacing its values.
    pub fn set_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.0.set_header(name, value.as_ref())
    }

    /// Adds a header value.
    pub fn append_header(&self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.0.append_header(name, value.as_ref())
    }

    /// Removes a header.
    pub fn remove_header(&self, name: &str) {
        self.0.remove_header(name)
    }
}

/// A response made by a filter, built step by step:
///
/// ```
/// # use sluice_sdk::LocalResponse;
/// let denied = LocalResponse::new(403).header("content-type", "text/plain").body("denied\n");
/// assert_eq!(denied.status, 403);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl From<LocalResponse> for wit::LocalResponse {
    fn from(response: LocalResponse) -> Self {
        Self { status: response.status, headers: response.headers, body: response.body }
    }
}
