//! `sluice:filter/http`: the request and response handles over the live heads, and the checks on every header a guest sets.

use super::*;

// --- header helpers shared by request and response ---

pub(super) fn header_first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|value| value.as_bytes().to_vec())
}

pub(super) fn header_all(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name).iter().map(|value| value.as_bytes().to_vec()).collect()
}

pub(super) fn header_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())).collect()
}

/// Most header fields a head may have once a filter has added to it.
pub const MAX_HEAD_FIELDS: usize = 256;
/// Longest header value a filter may set, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;
/// Most bytes of names and values a head may have once a filter has added to it.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// Longest path and query a filter may set, in bytes.
pub const MAX_PATH_BYTES: usize = 16 * 1024;
/// Longest cache key a filter may set, in bytes; a longer one is ignored.
pub const MAX_CACHE_KEY_BYTES: usize = 4096;

/// Headers that describe one connection, not the message: the host's business alone.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// Validates a header a guest wants to set. Framing and connection headers stay the host's
/// business.
pub(super) fn guest_header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    if is_hop_by_hop(name.as_str()) {
        return Err(format!("header {name} is managed by the host"));
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(format!("value for header {name} is longer than {MAX_HEADER_VALUE_BYTES} bytes"));
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

/// Bytes of names and values in `headers`.
fn head_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum()
}

/// Adds (or, without `append`, sets) a header a guest gave, within the head's bounds.
pub(crate) fn set_header(headers: &mut HeaderMap, name: &str, value: &[u8], append: bool) -> Result<(), String> {
    let (name, value) = guest_header(name, value)?;
    let replaced: usize =
        if append { 0 } else { headers.get_all(&name).iter().map(|old| name.as_str().len() + old.len()).sum() };
    let grows = append || replaced == 0;
    if grows && headers.len() >= MAX_HEAD_FIELDS {
        return Err(format!("the head already has {MAX_HEAD_FIELDS} header fields"));
    }
    if head_bytes(headers) - replaced + name.as_str().len() + value.len() > MAX_HEAD_BYTES {
        return Err(format!("the head would be larger than {MAX_HEAD_BYTES} bytes"));
    }
    let added =
        if append { headers.try_append(name, value).map(|_| ()) } else { headers.try_insert(name, value).map(|_| ()) };
    added.map_err(|_| "the head has too many header fields".to_owned())
}

/// Methods a filter may not give a request: the client may not send them either.
fn refused_method(method: &Method) -> bool {
    *method == Method::CONNECT || *method == Method::TRACE
}

pub(super) fn remove_header(headers: &mut HeaderMap, name: &str) {
    if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
        && guest_header(name.as_str(), b"").is_ok()
    {
        headers.remove(name);
    }
}

impl types::Host for FilterState {}
impl wit_http::Host for FilterState {}

impl wit_http::HostRequest for FilterState {
    fn method(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.request_slot()?.parts.method.as_str().to_owned())
    }

    fn set_method(&mut self, _: Resource<RequestHandle>, method: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| {
            let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
            if refused_method(&method) {
                return Err(format!("method {method} is not served through the proxy"));
            }
            slot.parts.method = method;
            Ok(())
        }))
    }

    fn path_with_query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        let uri = &self.request_slot()?.parts.uri;
        Ok(uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()))
    }

    fn set_path_with_query(
        &mut self,
        _: Resource<RequestHandle>,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| {
            if !value.starts_with('/') {
                return Err("the path must start with /".to_owned());
            }
            if value.len() > MAX_PATH_BYTES {
                return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
            }
            let path_and_query =
                PathAndQuery::try_from(value.as_str()).map_err(|_| format!("invalid path {value:?}"))?;
            let mut uri_parts = std::mem::take(&mut slot.parts.uri).into_parts();
            uri_parts.path_and_query = Some(path_and_query);
            slot.parts.uri = Uri::from_parts(uri_parts).map_err(|err| err.to_string())?;
            Ok(())
        }))
    }

    fn authority(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        let parts = &self.request_slot()?.parts;
        let authority =
            parts.uri.authority().map(|authority| authority.as_str().to_owned()).or_else(|| {
                parts.headers.get(http::header::HOST).and_then(|host| host.to_str().ok()).map(str::to_owned)
            });
        Ok(authority.unwrap_or_default())
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(header_first(&self.request_slot()?.parts.headers, &name))
    }

    fn header_all(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(header_all(&self.request_slot()?.parts.headers, &name))
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(header_list(&self.request_slot()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, false)))
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, true)))
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<()> {
        if let Ok(slot) = self.writable_request()? {
            remove_header(&mut slot.parts.headers, &name);
        }
        Ok(())
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.context()?.client_ip.to_string())
    }

    fn client_identity(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.context()?.client_identity.as_deref().map(str::to_owned))
    }

    fn request_id(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.context()?.request_id.to_string())
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.context()?.route.to_string())
    }

    fn set_cache_key(&mut self, _: Resource<RequestHandle>, key: String) -> wasmtime::Result<()> {
        // A longer key is refused (the default key stays): the cache keeps keys in memory.
        if key.len() <= MAX_CACHE_KEY_BYTES {
            self.request_slot()?.cache_key = Some(key);
        }
        Ok(())
    }

    fn drop(&mut self, handle: Resource<RequestHandle>) -> wasmtime::Result<()> {
        let _ = self.table.delete(handle);
        Ok(())
    }
}

impl wit_http::HostResponse for FilterState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<u16> {
        Ok(self.response_slot()?.parts.status.as_u16())
    }

    fn set_status(&mut self, _: Resource<ResponseHandle>, status: u16) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_response()?.and_then(|slot| {
            slot.parts.status = StatusCode::from_u16(status)
                .ok()
                .filter(|status| !status.is_informational())
                .ok_or_else(|| format!("invalid status {status}"))?;
            // A 204 has no body, so no length of one (RFC 9110 section 8.6).
            if slot.parts.status == StatusCode::NO_CONTENT {
                slot.parts.headers.remove(http::header::CONTENT_LENGTH);
                slot.parts.headers.remove(http::header::TRANSFER_ENCODING);
            }
            Ok(())
        }))
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(header_first(&self.response_slot()?.parts.headers, &name))
    }

    fn header_all(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(header_all(&self.response_slot()?.parts.headers, &name))
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(header_list(&self.response_slot()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_response()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, false)))
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_response()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, true)))
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<()> {
        if let Ok(slot) = self.writable_response()? {
            remove_header(&mut slot.parts.headers, &name);
        }
        Ok(())
    }

    fn drop(&mut self, handle: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        let _ = self.table.delete(handle);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_cannot_grow_a_head_without_bound() {
        let mut headers = HeaderMap::new();
        for index in 0..MAX_HEAD_FIELDS {
            set_header(&mut headers, &format!("x-{index}"), b"v", false).unwrap();
        }
        assert!(set_header(&mut headers, "x-one-more", b"v", false).is_err());
        assert!(set_header(&mut headers, "x-0", b"v", true).is_err(), "appending grows the head too");
        // Replacing an existing header does not grow it.
        set_header(&mut headers, "x-0", b"w", false).unwrap();
        assert_eq!(headers.len(), MAX_HEAD_FIELDS);

        let mut headers = HeaderMap::new();
        assert!(set_header(&mut headers, "x-big", &vec![b'a'; MAX_HEADER_VALUE_BYTES + 1], false).is_err());
        let value = vec![b'a'; MAX_HEADER_VALUE_BYTES];
        let fitting = (0..MAX_HEAD_FIELDS)
            .take_while(|index| set_header(&mut headers, &format!("x-{index}"), &value, false).is_ok())
            .count();
        assert_eq!(fitting, MAX_HEAD_BYTES / (MAX_HEADER_VALUE_BYTES + 4));
    }

    #[test]
    fn connection_headers_stay_the_hosts() {
        for name in ["connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "content-length"] {
            assert!(guest_header(name, b"x").is_err(), "{name}");
        }
        assert!(refused_method(&Method::CONNECT) && refused_method(&Method::TRACE));
    }
}
