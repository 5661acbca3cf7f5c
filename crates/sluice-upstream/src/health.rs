//! Active health checks: every interval, each server of an upstream is asked (an HTTP request
//! whose status must be among the expected ones, or just a TCP connection); `fall` failures in a
//! row take it out of balancing and `rise` passes bring it back.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use tokio_util::sync::CancellationToken;

use super::Upstream;
use sluice_http::body;

/// How servers are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET path`; the status must be one of `expected` (any 2xx or 3xx when empty).
    Http {
        /// The path and query asked for.
        path: PathAndQuery,
        /// Statuses that count as healthy.
        expected: Vec<StatusCode>,
    },
    /// A TCP connection that opens counts as healthy.
    Tcp,
}

/// An upstream's active health checking.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// What a check does.
    pub kind: CheckKind,
    /// Time between checks of a server.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Passes in a row that bring an unhealthy server back.
    pub rise: u32,
    /// Failures in a row that take a healthy server out.
    pub fall: u32,
}

/// Checks `upstream`'s servers until it is dropped or `stop` is cancelled.
pub(super) fn spawn(upstream: &Arc<Upstream>, check: HealthCheck, stop: CancellationToken) {
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(check.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(upstream) = weak.upgrade() else { return };
            let checks = (0..upstream.servers.len()).map(|index| check_server(&upstream, index, &check));
            futures_util::future::join_all(checks).await;
        }
    });
}

async fn check_server(upstream: &Upstream, index: usize, check: &HealthCheck) {
    let state = &upstream.servers[index];
    let authority = state.server.authority.clone();
    let passed = match &check.kind {
        CheckKind::Tcp => {
            let port =
                authority.port_u16().unwrap_or(if upstream.scheme() == http::uri::Scheme::HTTPS { 443 } else { 80 });
            let connect = upstream.resolver.connect(authority.host(), port);
            matches!(tokio::time::timeout(check.timeout, connect).await, Ok(Ok(_)))
        }
        CheckKind::Http { path, expected } => {
            let uri =
                Uri::builder().scheme(upstream.scheme()).authority(authority.clone()).path_and_query(path.clone());
            let request = uri
                .build()
                .ok()
                .and_then(|uri| Request::get(uri).header("user-agent", "sluice-health-check").body(body::empty()).ok());
            match request {
                None => false,
                Some(request) => match tokio::time::timeout(check.timeout, upstream.client().request(request)).await {
                    Ok(Ok(response)) => {
                        let status = response.status();
                        if expected.is_empty() {
                            status.is_success() || status.is_redirection()
                        } else {
                            expected.contains(&status)
                        }
                    }
                    _ => false,
                },
            }
        }
    };
    if let Some(healthy) = state.record_check(passed, check.rise, check.fall, Instant::now()) {
        let server = authority.as_str();
        if healthy {
            tracing::info!(upstream = %upstream.name, server, "server passed its health checks: back in balancing");
        } else {
            tracing::warn!(upstream = %upstream.name, server, "server failed its health checks: out of balancing");
        }
    }
}
