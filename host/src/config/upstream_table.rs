//! The upstreams of one configuration by name, and the callouts filters make to them: the
//! filter runtime sends callouts through [`CalloutUpstreams`], which this table implements, so
//! the runtime itself knows no upstream code.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use http::{HeaderMap, Request, Uri};
use sluice_http::body::{self, ProxyBody};
use sluice_runtime::{CalloutExchange, CalloutUpstreams};
use sluice_upstream::{PickContext, Upstream};

/// Upstreams by name.
#[derive(Debug, Default)]
pub struct UpstreamTable(BTreeMap<String, Arc<Upstream>>);

impl UpstreamTable {
    /// A table of `upstreams`.
    pub fn new(upstreams: BTreeMap<String, Arc<Upstream>>) -> Self {
        Self(upstreams)
    }
}

impl Deref for UpstreamTable {
    type Target = BTreeMap<String, Arc<Upstream>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl CalloutUpstreams for UpstreamTable {
    fn contains(&self, upstream: &str) -> bool {
        self.0.contains_key(upstream)
    }

    fn send(&self, upstream: &str, client_ip: IpAddr, mut request: Request<ProxyBody>) -> Option<CalloutExchange> {
        let upstream = self.0.get(upstream)?.clone();
        Some(Box::pin(async move {
            // A callout carries no client headers to hash or stick on: the balancer picks by
            // the client's address and its own state.
            let no_headers = HeaderMap::new();
            let server = upstream.pick_server(&PickContext { client_ip, headers: &no_headers });
            let path_and_query =
                request.uri().path_and_query().cloned().ok_or_else(|| "a callout needs a path".to_owned())?;
            *request.uri_mut() = Uri::builder()
                .scheme(upstream.scheme())
                .authority(server.authority.clone())
                .path_and_query(path_and_query)
                .build()
                .map_err(|err| format!("invalid path: {err}"))?;
            let response = upstream.client().request(request).await.map_err(|err| err.to_string())?;
            Ok(response.map(body::boxed))
        }))
    }
}
