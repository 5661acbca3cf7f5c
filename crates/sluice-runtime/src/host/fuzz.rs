//! A fuzz target for the host-call boundary: sequences of host calls with arbitrary arguments, as
//! a hostile guest would make them, against one instance's state, checking after every call
//! that what the guest can grow stays within its bound (head fields and bytes, key-value keys and
//! bytes, metric series, log lines, bans) and that nothing panics. It runs for a bounded time in the
//! suite (`SLUICE_FUZZ_SECONDS`, 10 by default) over its corpus (`__fuzz__/`) and fresh inputs.

use bolero::TypeGenerator;
use wasmtime::component::Resource;

use super::*;
use crate::bindings::sluice::filter::{
    client as wit_client, kv as wit_kv, log as wit_log, metrics as wit_metrics, random as wit_random,
};
use crate::kv::KvQuota;

/// One host call and its arguments.
#[derive(Debug, Clone, TypeGenerator)]
enum HostCall {
    SetHeader {
        response: bool,
        append: bool,
        name: String,
        value: Vec<u8>,
    },
    RemoveHeader {
        response: bool,
        name: String,
    },
    SetMethod(String),
    SetPath(String),
    SetStatus(u16),
    SetCacheKey(String),
    Counter {
        name: String,
        labels: Vec<(String, String)>,
        value: u64,
    },
    Histogram {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    },
    Log {
        error: bool,
        message: String,
    },
    KvSet {
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    },
    KvIncrement {
        key: String,
        delta: i64,
        ttl_ms: u64,
    },
    KvCompareAndSwap {
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    },
    KvGet(String),
    KvDelete(String),
    KvTakeTokens {
        key: String,
        capacity: u64,
        rate: u64,
        period_ms: u64,
        cost: u64,
    },
    Random(u32),
    /// A ban of the request's client, who is `client` (the low byte of 192.0.2.x).
    Ban {
        client: u8,
        duration_ms: u64,
        reason: String,
    },
    Location,
}

const BANS: usize = 4;
const QUOTA: KvQuota = KvQuota { max_keys: 16, max_bytes: 4096 };
const SERIES: usize = 8;

fn fuzz_time() -> Duration {
    let seconds = std::env::var("SLUICE_FUZZ_SECONDS").ok().and_then(|text| text.parse().ok()).unwrap_or(10);
    Duration::from_secs(seconds)
}

fn fresh_state(services: &Arc<HostServices>) -> FilterState {
    let tenant = Tenant {
        name: "fuzzed".into(),
        kv: QUOTA,
        metric_series: SERIES,
        log_lines_per_second: 10,
        bans: Some(crate::BanGrant { max_duration: Duration::from_secs(3600), max_entries: BANS }),
        ..Tenant::default_tenant()
    };
    let tenant = Arc::new(tenant);
    let mut state = FilterState::new(services.clone(), "route".into(), "filter".into(), &tenant);
    state.call = Some(CallContext {
        route: "route".into(),
        filter: "filter".into(),
        tenant,
        request_id: "id".into(),
        client_ip: IpAddr::from([127, 0, 0, 1]),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(crate::NoUpstreams),
        deadline: None,
    });
    let mut request = http::Request::new(()).into_parts().0;
    request.headers.insert("host", HeaderValue::from_static("a"));
    state.request = Some(RequestSlot { parts: request, writable: true, cache_key: None });
    let response = http::Response::new(()).into_parts().0;
    state.response = Some(ResponseSlot { parts: response, writable: true });
    state
}

/// The value of a host call's future, which with the memory key-value backend is ready at once.
fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("a memory key-value call waited"),
    }
}

fn make(state: &mut FilterState, call: HostCall) -> wasmtime::Result<()> {
    use wit_http::{HostRequest, HostResponse};
    let request = || Resource::<RequestHandle>::new_borrow(0);
    let response = || Resource::<ResponseHandle>::new_borrow(0);
    match call {
        HostCall::SetHeader { response: false, append, name, value } => {
            let _ = if append {
                HostRequest::append_header(state, request(), name, value)?
            } else {
                HostRequest::set_header(state, request(), name, value)?
            };
        }
        HostCall::SetHeader { response: true, append, name, value } => {
            let _ = if append {
                HostResponse::append_header(state, response(), name, value)?
            } else {
                HostResponse::set_header(state, response(), name, value)?
            };
        }
        HostCall::RemoveHeader { response: false, name } => HostRequest::remove_header(state, request(), name)?,
        HostCall::RemoveHeader { response: true, name } => HostResponse::remove_header(state, response(), name)?,
        HostCall::SetMethod(method) => {
            let _ = HostRequest::set_method(state, request(), method)?;
        }
        HostCall::SetPath(path) => {
            let _ = HostRequest::set_path_with_query(state, request(), path)?;
        }
        HostCall::SetStatus(status) => {
            let _ = HostResponse::set_status(state, response(), status)?;
        }
        HostCall::SetCacheKey(key) => HostRequest::set_cache_key(state, request(), key)?,
        HostCall::Counter { name, labels, value } => wit_metrics::Host::counter_add(state, name, labels, value)?,
        HostCall::Histogram { name, labels, value } => wit_metrics::Host::histogram_record(state, name, labels, value)?,
        HostCall::Log { error, message } => {
            let level = if error { types::Level::Error } else { types::Level::Info };
            wit_log::Host::log(state, level, message)?;
        }
        HostCall::KvSet { key, value, ttl_ms } => {
            // As the linked `set` does: the size is checked before the value is copied.
            if QUOTA.admits_value(&key, value.len()).is_ok() {
                let _ = at_once(wit_kv::Host::set(state, key, value, ttl_ms))?;
            }
        }
        HostCall::KvIncrement { key, delta, ttl_ms } => {
            let _ = at_once(wit_kv::Host::increment(state, key, delta, ttl_ms))?;
        }
        HostCall::KvCompareAndSwap { key, expected, value, ttl_ms } => {
            let _ = at_once(wit_kv::Host::compare_and_swap(state, key, expected, value, ttl_ms))?;
        }
        HostCall::KvGet(key) => {
            let _ = at_once(wit_kv::Host::get(state, key))?;
        }
        HostCall::KvDelete(key) => {
            let _ = at_once(wit_kv::Host::delete(state, key))?;
        }
        HostCall::KvTakeTokens { key, capacity, rate, period_ms, cost } => {
            let _ = at_once(wit_kv::Host::take_tokens(state, key, capacity, rate, period_ms, cost))?;
        }
        HostCall::Ban { client, duration_ms, reason } => {
            if let Some(call) = state.call.as_mut() {
                call.client_ip = IpAddr::from([192, 0, 2, client]);
            }
            let _ = wit_client::Host::ban(state, duration_ms, reason)?;
        }
        HostCall::Location => {
            let _ = wit_client::Host::location(state)?;
        }
        HostCall::Random(len) => {
            let bytes = wit_random::Host::bytes(state, len)?;
            assert!(bytes.len() <= 1 << 20);
        }
    }
    Ok(())
}

fn head_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum()
}

fn check_bounds(state: &FilterState, services: &HostServices) {
    for headers in [&state.request.as_ref().unwrap().parts.headers, &state.response.as_ref().unwrap().parts.headers] {
        assert!(headers.len() <= handles::MAX_HEAD_FIELDS);
        assert!(head_bytes(headers) <= handles::MAX_HEAD_BYTES);
    }
    let request = &state.request.as_ref().unwrap().parts;
    assert_ne!(request.method, Method::CONNECT);
    assert_ne!(request.method, Method::TRACE);
    assert!(request.uri.path().len() <= handles::MAX_PATH_BYTES);
    assert!(
        state.request.as_ref().unwrap().cache_key.as_ref().is_none_or(|key| key.len() <= handles::MAX_CACHE_KEY_BYTES)
    );
    let response = &state.response.as_ref().unwrap().parts;
    if response.status == StatusCode::NO_CONTENT {
        assert!(!response.headers.contains_key(http::header::CONTENT_LENGTH));
    }
    assert!(services.kv.len("fuzzed") <= QUOTA.max_keys);
    assert!(services.metric_series.count("fuzzed") <= SERIES);
    let bans = services.blocks.active();
    assert!(bans.len() <= BANS);
    assert!(
        bans.iter()
            .all(|ban| ban.reason.len() <= client::MAX_BAN_REASON_BYTES && !ban.reason.chars().any(char::is_control))
    );
    if let Some(message) = &state.guest_error {
        assert!(message.len() <= log::MAX_LINE_BYTES + 32);
        assert!(!message.chars().any(char::is_control));
    }
}

#[test]
fn fuzz_host_calls_stay_within_their_bounds() {
    bolero::check!().with_type::<Vec<HostCall>>().with_test_time(fuzz_time()).for_each(|calls| {
        let services = Arc::new(HostServices::default());
        let mut state = fresh_state(&services);
        for call in calls {
            make(&mut state, call.clone()).expect("no host call fails the store");
            check_bounds(&state, &services);
        }
    });
}
