//! The filter runtime called directly, without sockets: every phase and decision, limits, and the
//! checks made when a plugin loads.

use std::sync::Arc;

use bytes::Bytes;
use sluice_runtime::{
    BodyOutcome, CallContext, FailurePolicy, FilterPool, FilterSpec, HeadOutcome, Isolation, Plugin, PluginError,
    RequestHead, Runtime, Tenant,
};
use sluice_tests::plugin;

async fn probe_pool(config: &str) -> Arc<FilterPool> {
    let runtime = sluice_tests::filter_runtime();
    let probe = Plugin::load_file(&runtime, "probe", &plugin("tests/plugins/probe")).unwrap();
    let spec = FilterSpec {
        route: "direct".into(),
        name: "probe".into(),
        plugin: Arc::new(probe),
        config: config.to_owned(),
        on_error: FailurePolicy::FailClosed,
        isolation: Isolation::Instance,
        tenant: Arc::new(Tenant::default_tenant()),
    };
    FilterPool::prepare(runtime, spec).await.unwrap()
}

fn context() -> CallContext {
    CallContext {
        route: "direct".into(),
        filter: "probe".into(),
        tenant: Arc::new(Tenant::default_tenant()),
        request_id: "req-1".into(),
        client_ip: "192.0.2.1".parse().unwrap(),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(sluice_runtime::NoUpstreams),
        deadline: None,
    }
}

fn request(path: &str) -> RequestHead {
    let parts = http::Request::get(path).header("host", "example.test").body(()).unwrap().into_parts().0;
    RequestHead { parts, cache_key: None }
}

fn response(status: u16) -> http::response::Parts {
    http::Response::builder().status(status).body(()).unwrap().into_parts().0
}

#[tokio::test]
async fn request_phase_continues_or_answers() {
    let pool = probe_pool(r#"{"tag":"t","deny_path":"/deny"}"#).await;
    let mut instance = pool.checkout(context()).await.unwrap();
    // A Rust guest's memory: its stack and data, at least a megabyte, in 64 KiB pages.
    assert!(instance.memory_bytes() >= 1 << 20, "{}", instance.memory_bytes());
    assert_eq!(instance.memory_bytes() % (64 << 10), 0);

    let mut head = request("/ok");
    assert!(matches!(instance.on_request(&mut head).await.unwrap(), HeadOutcome::Continue));
    assert_eq!(head.parts.headers["x-chain"], "t");
    assert_eq!(head.parts.headers["host"], "example.test", "the head comes back whole");

    let mut head = request("/deny");
    match instance.on_request(&mut head).await.unwrap() {
        HeadOutcome::Respond(response) => assert_eq!(response.status(), 403),
        HeadOutcome::Continue => panic!("expected a local response"),
    }
}

#[tokio::test]
async fn request_body_phase_replaces_or_answers() {
    let pool = probe_pool(r#"{"tag":"t","upper_request_body":true,"deny_body":"evil"}"#).await;
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = request("/");
    match instance.on_request_body(&mut head, Bytes::from_static(b"hello")).await.unwrap() {
        BodyOutcome::Replace(bytes) => assert_eq!(bytes, "HELLO"),
        other => panic!("expected a replacement, got {other:?}"),
    }
    // The head is still writable in the buffered request body phase.
    assert_eq!(head.parts.headers["x-request-body-bytes"], "5");
    assert!(matches!(
        instance.on_request_body(&mut head, Bytes::from_static(b"so evil")).await.unwrap(),
        BodyOutcome::Respond(_)
    ));
}

#[tokio::test]
async fn response_phases_continue_replace_or_answer() {
    let pool = probe_pool(r#"{"tag":"t","replace_status":500,"upper_response_body":true}"#).await;
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = request("/");

    let mut parts = response(200);
    assert!(matches!(instance.on_response(&mut head, &mut parts).await.unwrap(), HeadOutcome::Continue));
    assert_eq!(parts.headers["x-chain-response"], "t");
    assert_eq!(parts.headers["x-t-saw-request-readonly"], "true");

    let mut failed = response(500);
    assert!(matches!(instance.on_response(&mut head, &mut failed).await.unwrap(), HeadOutcome::Respond(_)));

    let chunk = instance.on_response_body(&mut head, &mut parts, false, Bytes::from_static(b"abc"), false).await;
    assert!(matches!(chunk.unwrap(), BodyOutcome::Replace(bytes) if bytes == "ABC"));
    let last = instance.on_response_body(&mut head, &mut parts, false, Bytes::new(), true).await;
    assert!(matches!(last.unwrap(), BodyOutcome::Replace(bytes) if bytes == "[1 chunks]"));
}

#[tokio::test]
async fn buffered_response_body_phase_may_change_the_head() {
    let pool = probe_pool(r#"{"tag":"t","append_response_body":"?"}"#).await;
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = request("/");
    let mut parts = response(200);
    let outcome = instance.on_response_body(&mut head, &mut parts, true, Bytes::from_static(b"body"), true).await;
    assert!(matches!(outcome.unwrap(), BodyOutcome::Replace(bytes) if bytes == "body?"));
    assert_eq!(parts.headers["x-buffered"], "yes");
}

#[tokio::test]
async fn a_core_module_is_refused_with_a_hint() {
    let runtime = sluice_tests::filter_runtime();
    // The smallest valid core module: the preamble alone.
    let error = Plugin::load(&runtime, "core", b"\0asm\x01\0\0\0").unwrap_err();
    assert!(error.to_string().contains("core module, not a component"), "{error}");
}

/// A component for the same world at another version of the package.
fn component_for_version(version: &str) -> Vec<u8> {
    component_for_world(version, |wit| wit)
}

/// A component for the world `edit` makes of this one, at `version` of the package.
fn component_for_world(version: &str, edit: impl FnOnce(String) -> String) -> Vec<u8> {
    let wit = std::fs::read_to_string(sluice_tests::repo_root().join("wit/filter.wit")).unwrap().replace(
        &format!("package sluice:filter@{};", sluice_runtime::WIT_VERSION),
        &format!("package sluice:filter@{version};"),
    );
    let wit = edit(wit);
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("filter.wit", &wit).unwrap();
    let world = resolve.select_world(&[package], Some("plugin")).unwrap();
    let mut module = wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8).unwrap();
    wit_component::ComponentEncoder::default().module(&module).unwrap().encode().unwrap()
}

#[tokio::test]
async fn a_plugin_for_another_world_version_is_refused_saying_so() {
    let runtime = sluice_tests::filter_runtime();
    let error = Plugin::load(&runtime, "future", &component_for_version("0.2.0")).unwrap_err();
    assert!(matches!(error, PluginError::IncompatibleWorld { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "built for sluice:filter@0.2.0; this Sluice serves sluice:filter@0.1.3: rebuild the plugin against this version"
    );
    // A patch release of the same version is compatible.
    assert!(Plugin::load(&runtime, "patch", &component_for_version("0.1.3")).is_ok());
}

#[tokio::test]
async fn a_plugin_built_for_the_0_1_0_world_loads() {
    // The 0.1.0 world: everything but the `client` interface that 0.1.1 added.
    let component = component_for_world("0.1.0", |wit| {
        let start = wit.find("/// The client of the request being served").unwrap();
        let end = wit.find("/// A Sluice filter plugin").unwrap();
        let mut old = format!("{}{}", &wit[..start], &wit[end..]);
        // (`trace`, added in 0.1.3, sits between the two and goes with it.)
        old = old.replace("    import client;\n", "").replace("    import trace;\n", "");
        assert!(!old.contains("client {") && !old.contains("import client") && !old.contains("import trace"));
        old
    });
    let runtime = sluice_tests::filter_runtime();
    let plugin = Plugin::load(&runtime, "old", &component).expect("a 0.1.0 component loads");
    assert!(!plugin.capabilities().contains(&"client".to_owned()));
}

#[tokio::test]
async fn a_plugin_built_for_the_0_1_2_world_loads_and_trace_needs_no_grant() {
    // The 0.1.2 world: everything but the `trace` interface that 0.1.3 added.
    let component = component_for_world("0.1.2", |wit| {
        let start = wit.find("/// The request's distributed trace").unwrap();
        let end = wit.find("/// A Sluice filter plugin").unwrap();
        let old = format!("{}{}", &wit[..start], &wit[end..]).replace("    import trace;\n", "");
        assert!(!old.contains("interface trace"));
        old
    });
    let runtime = sluice_tests::filter_runtime();
    Plugin::load(&runtime, "old", &component).expect("a 0.1.2 component loads");
    // The whole 0.1.3 world imports `trace`, which is no capability a tenant grants.
    let current = Plugin::load(&runtime, "current", &component_for_version(sluice_runtime::WIT_VERSION)).unwrap();
    assert!(!current.capabilities().contains(&"trace".to_owned()), "{:?}", current.capabilities());
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let cache = std::env::temp_dir().join(format!("sluice-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let component = std::fs::read(plugin("tests/plugins/probe")).unwrap();
    let runtime = Runtime::new(Some(cache.clone())).unwrap();
    Plugin::load(&runtime, "probe", &component).unwrap();
    let cached_files = walk(&cache);
    assert!(!cached_files.is_empty(), "nothing was written to the compiled-component cache");
    // A second engine with the same settings finds the artifact instead of writing another.
    let again = Runtime::new(Some(cache.clone())).unwrap();
    Plugin::load(&again, "probe", &component).unwrap();
    assert_eq!(walk(&cache), cached_files);
    let _ = std::fs::remove_dir_all(&cache);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.components().any(|part| part.as_os_str() == "modules") && path.extension().is_none() {
            // Only compiled artifacts: the cache's worker writes bookkeeping files (`*.stats`,
            // `*.wip-*`) beside them at its own pace, from a background thread.
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A warm instance serves request after request: nothing a call lends the guest may outlive the
/// call (wasmtime caps a store at 100,000 live handles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_instance_serves_more_calls_than_the_handle_limit() {
    let pool = probe_pool(r#"{"tag":"t"}"#).await;
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = request("/");
    let mut parts = response(200);
    for call in 0..60_000 {
        let outcome = instance.on_request(&mut head).await;
        assert!(outcome.is_ok(), "request call {call}: {outcome:?}");
        let outcome = instance.on_response(&mut head, &mut parts).await;
        assert!(outcome.is_ok(), "response call {call}: {outcome:?}");
        head.parts.headers.clear();
        parts.headers.clear();
    }
}

/// The initial size, in bytes, of the first linear memory of the core module in `component`.
fn initial_memory_bytes(component: &[u8]) -> u64 {
    wasmparser::Parser::new(0)
        .parse_all(component)
        .find_map(|payload| match payload {
            Ok(wasmparser::Payload::MemorySection(memories)) => memories.into_iter().next()?.ok(),
            _ => None,
        })
        .expect("a memory")
        .initial
        * 65536
}

#[tokio::test]
async fn a_rust_filter_serves_from_its_initial_memory_without_growing_it() {
    // The Rust SDK's allocator starts from a static arena, so a typical filter never grows its
    // memory: growing it would cost page-protection changes for every fresh instance.
    let path = plugin("tests/plugins/probe");
    let pool = probe_pool("{\"tag\":\"t\",\"count\":false}").await;
    let initial = initial_memory_bytes(&std::fs::read(&path).unwrap());
    let mut instance = pool.checkout(context()).await.unwrap();
    for call in 0..100 {
        let mut head = request(&format!("/call/{call}"));
        instance.on_request(&mut head).await.unwrap();
        let mut parts = response(200);
        instance.on_response(&mut head, &mut parts).await.unwrap();
        assert_eq!(instance.memory_bytes() as u64, initial, "call {call} grew the memory");
    }
}

async fn pool_for(runtime: &Arc<Runtime>, tenant: Arc<Tenant>, relative: &str, config: &str) -> Arc<FilterPool> {
    let plugin = Plugin::load_file(runtime, "p", &plugin(relative)).unwrap();
    let spec = FilterSpec {
        route: "r".into(),
        name: "p".into(),
        plugin: Arc::new(plugin),
        config: config.into(),
        on_error: FailurePolicy::FailClosed,
        isolation: Isolation::Instance,
        tenant,
    };
    FilterPool::prepare(runtime.clone(), spec).await.unwrap()
}

/// A runtime for the lane tests. They are about lanes, not priority: at the default (idle)
/// priority a CI machine busy with other tests would keep the spinning calls waiting for a CPU.
fn lane_test_runtime() -> Arc<Runtime> {
    let runtime = sluice_tests::filter_runtime();
    runtime.set_long_call_priority(sluice_runtime::LongCallPriority::Niceness(0));
    runtime
}

/// A tenant whose calls spin for 100 ms of CPU each.
fn attacker() -> Arc<Tenant> {
    Arc::new(Tenant {
        name: "attacker".into(),
        cpu_per_call: std::time::Duration::from_millis(100),
        ..Tenant::default_tenant()
    })
}

/// Waits (yielding, bounded) until `lane` is as `available` says.
async fn until_lane(lane: &sluice_runtime::LongCallLane, available: usize) {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while lane.available() != available {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the lane never had {available} free"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_take_their_tenants_lane_one_at_a_time_while_short_calls_never_wait() {
    use sluice_runtime::FilterErrorKind;

    let runtime = lane_test_runtime();
    let attacker = attacker();
    let victim = Arc::new(Tenant { name: "victim".into(), ..Tenant::default_tenant() });
    let looping = pool_for(&runtime, attacker.clone(), "tests/plugins/hostile", r#"{"mode":"loop"}"#).await;
    let probe = pool_for(&runtime, victim.clone(), "tests/plugins/probe", r#"{"tag":"v"}"#).await;

    // Three spinning calls of the attacker at once: each becomes a long call after a tick or two.
    let attacks: Vec<_> = (0..3)
        .map(|_| {
            let looping = looping.clone();
            tokio::spawn(async move {
                let mut instance = looping.checkout(context()).await.unwrap();
                instance.on_request(&mut request("/spin")).await.map(|_| ())
            })
        })
        .collect();
    let lane = &attacker.long_calls;
    until_lane(lane, 0).await;

    // While the attacker holds its lane, the victim's calls are short and never wait for it.
    for call in 0..20 {
        let mut instance = probe.checkout(context()).await.unwrap();
        let outcome = instance.on_request(&mut request(&format!("/victim/{call}"))).await;
        assert!(matches!(outcome, Ok(HeadOutcome::Continue)), "{outcome:?}");
    }
    assert_eq!(victim.long_calls.available(), 1, "short calls take no lane");

    // Each attack still ran until its own CPU limit (it waited for the lane, paused, not failed).
    for attack in attacks {
        let error = attack.await.unwrap().expect_err("a spinning call ends at its CPU limit");
        assert!(matches!(error.kind, FilterErrorKind::CpuLimit(_)), "{error:?}");
    }
    assert_eq!(lane.available(), 1, "every lane was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_short_gives_back_its_lane_and_its_instance_is_not_reused() {
    let runtime = lane_test_runtime();
    let attacker = attacker();
    let looping = pool_for(&runtime, attacker.clone(), "tests/plugins/hostile", r#"{"mode":"loop"}"#).await;
    let call = tokio::spawn({
        let looping = looping.clone();
        async move {
            let mut instance = looping.checkout(context()).await.unwrap();
            instance.on_request(&mut request("/spin")).await.map(|_| ())
        }
    });
    until_lane(&attacker.long_calls, 0).await;
    // The request goes away while its filter spins: the call is dropped midway.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // The call had moved to a long-call thread: it is dropped there at its next pause, and its
    // lane comes back with the instance.
    until_lane(&attacker.long_calls, 1).await;
    // The next call runs on a fresh instance and takes the lane again.
    let mut instance = looping.checkout(context()).await.unwrap();
    let error = instance.on_request(&mut request("/spin")).await.expect_err("spins to its CPU limit");
    assert!(matches!(error.kind, sluice_runtime::FilterErrorKind::CpuLimit(_)), "{error:?}");
    drop(instance);
    assert_eq!(attacker.long_calls.available(), 1);
}

/// A request that makes `tests/plugins/cpu-bound` spin for `ms` of wall-clock time.
fn spinning_request(ms: u64) -> RequestHead {
    let mut head = request("/spin");
    head.parts.headers.insert("x-spin", ms.into());
    head
}

#[tokio::test]
async fn filters_whose_imports_all_answer_at_once_are_called_directly_and_the_others_on_fibers() {
    let runtime = sluice_tests::filter_runtime();
    let tenant = Arc::new(Tenant::default_tenant());
    let direct = pool_for(&runtime, tenant.clone(), "tests/plugins/cpu-bound", "null").await;
    assert!(direct.calls_directly(), "cpu-bound imports no kv, callout or WASI");
    let mut instance = direct.checkout(context()).await.unwrap();
    let mut head = request("/");
    assert!(matches!(instance.on_request(&mut head).await.unwrap(), HeadOutcome::Continue));
    assert_eq!(head.parts.headers["x-cpu-bound"], "served");
    drop(instance);

    // The probe imports kv: its store is an async one.
    let probe = probe_pool(r#"{"tag":"t"}"#).await;
    assert!(!probe.calls_directly());

    // With a fresh instance per request, each starts directly too.
    let plugin = Plugin::load_file(&runtime, "p", &plugin("tests/plugins/cpu-bound")).unwrap();
    let spec = FilterSpec {
        route: "r".into(),
        name: "p".into(),
        plugin: Arc::new(plugin),
        config: "null".into(),
        on_error: FailurePolicy::FailClosed,
        isolation: Isolation::Request,
        tenant,
    };
    let fresh = FilterPool::prepare(runtime, spec).await.unwrap();
    assert!(fresh.calls_directly());
    for call in 0..3 {
        let mut instance = fresh.checkout(context()).await.unwrap();
        let mut head = request(&format!("/fresh/{call}"));
        assert!(matches!(instance.on_request(&mut head).await.unwrap(), HeadOutcome::Continue));
        assert_eq!(head.parts.headers["x-cpu-bound"], "served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_that_runs_long_finishes_and_turns_the_filters_later_calls_to_fibers_that_move() {
    let runtime = lane_test_runtime();
    let tenant = Arc::new(Tenant {
        name: "heavy".into(),
        cpu_per_call: std::time::Duration::from_secs(5),
        ..Tenant::default_tenant()
    });
    let pool = pool_for(&runtime, tenant.clone(), "tests/plugins/cpu-bound", "null").await;
    assert!(pool.calls_directly());

    // The first long call cannot leave the worker: it runs to its end there, within its limits.
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = spinning_request(30);
    assert!(matches!(instance.on_request(&mut head).await.unwrap(), HeadOutcome::Continue));
    assert_eq!(head.parts.headers["x-cpu-bound"], "served");
    drop(instance);
    assert!(!pool.calls_directly(), "a call ran long: the filter's calls now enter on fibers");
    assert_eq!(tenant.long_calls.available(), 1, "a direct call takes no lane");

    // The next long call runs on a fiber: it moves to a long-call thread and takes its tenant's
    // lane while it runs there.
    let spinning = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut instance = pool.checkout(context()).await.unwrap();
            let mut head = spinning_request(500);
            instance.on_request(&mut head).await.map(|outcome| (outcome, head))
        }
    });
    until_lane(&tenant.long_calls, 0).await;
    let (outcome, head) = spinning.await.unwrap().unwrap();
    assert!(matches!(outcome, HeadOutcome::Continue));
    assert_eq!(head.parts.headers["x-cpu-bound"], "served");
    assert_eq!(tenant.long_calls.available(), 1, "the lane was given back");
}

#[tokio::test]
async fn a_direct_call_past_its_cpu_limit_fails_alone_and_its_instance_is_not_reused() {
    let runtime = lane_test_runtime();
    let tenant = Arc::new(Tenant {
        name: "tight".into(),
        cpu_per_call: std::time::Duration::from_millis(5),
        ..Tenant::default_tenant()
    });
    let pool = pool_for(&runtime, tenant, "tests/plugins/cpu-bound", "null").await;
    assert!(pool.calls_directly());
    let mut instance = pool.checkout(context()).await.unwrap();
    let error = instance.on_request(&mut spinning_request(10_000)).await.expect_err("spins past 5 ms of CPU");
    assert!(matches!(error.kind, sluice_runtime::FilterErrorKind::CpuLimit(_)), "{error:?}");
    // The failed instance is gone: later phases of the request skip it.
    assert!(instance.on_request(&mut request("/")).await.is_err());
    drop(instance);
    // The next request gets a fresh instance, which serves.
    let mut instance = pool.checkout(context()).await.unwrap();
    let mut head = request("/");
    assert!(matches!(instance.on_request(&mut head).await.unwrap(), HeadOutcome::Continue));
    assert_eq!(head.parts.headers["x-cpu-bound"], "served");
}
