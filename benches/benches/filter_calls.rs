//! The cost of calling a filter: a warm on-request call (the steady state), a response-phase
//! call, and a request served by a fresh instance (`isolation = "request"`); the same warm call
//! on a JavaScript and a Go filter (the `sluice plugin new --lang js|go` scaffolds); and each
//! instance's linear memory, and a JavaScript instance's over 100,000 calls, printed.
//!
//! Run: `cargo bench -p sluice-benches --bench filter_calls`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_runtime::{
    CallContext, FailurePolicy, FilterPool, FilterSpec, Isolation, Plugin, RequestHead, Runtime, Tenant,
};

fn context() -> CallContext {
    CallContext {
        route: "bench".into(),
        filter: "hello".into(),
        tenant: Arc::new(Tenant::default_tenant()),
        request_id: "bench".into(),
        client_ip: "192.0.2.1".parse().unwrap(),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(sluice_runtime::NoUpstreams),
        deadline: None,
    }
}

/// A request head with ten headers, as a browser would send.
fn request_with_ten_headers() -> RequestHead {
    let mut builder = http::Request::get("/products/42?ref=home").header("host", "shop.example");
    let request_id = ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736");
    for (name, value) in sluice_benches::BROWSER_HEADERS.into_iter().chain([request_id]) {
        builder = builder.header(name, value);
    }
    RequestHead { parts: builder.body(()).unwrap().into_parts().0, cache_key: None }
}

fn pool(runtime: &tokio::runtime::Runtime, relative: &str, isolation: Isolation) -> Arc<FilterPool> {
    pool_of(runtime, &sluice_benches::plugin(relative), isolation)
}

/// The scaffold in `language`, created and built under target/ (kept between runs).
fn scaffold(language: sluice_packages::Language, name: &str) -> std::path::PathBuf {
    let parent = sluice_benches::repo_root().join("target/bench-scaffolds");
    std::fs::create_dir_all(&parent).unwrap();
    let dir = parent.join(name);
    if !dir.exists() {
        sluice_packages::new_plugin_in(&parent, name, language).unwrap();
    }
    let options = sluice_packages::BuildOptions { target_dir: None, quiet: true };
    sluice_packages::build_plugin(&dir, &options).unwrap()
}

fn pool_of(runtime: &tokio::runtime::Runtime, component: &std::path::Path, isolation: Isolation) -> Arc<FilterPool> {
    let sluice_runtime = Arc::new(Runtime::with_default_cache().unwrap());
    let plugin = Plugin::load_file(&sluice_runtime, "bench", component).unwrap();
    let spec = FilterSpec {
        route: "bench".into(),
        name: "bench".into(),
        plugin: Arc::new(plugin),
        config: "null".into(),
        on_error: FailurePolicy::FailClosed,
        isolation,
        tenant: Arc::new(Tenant::default_tenant()),
    };
    runtime.block_on(FilterPool::prepare(sluice_runtime, spec)).unwrap()
}

/// Times `calls` runs of `call` one after another inside one task, as the proxy makes them
/// (entering the async runtime once per call would add its own cost to every figure).
fn in_one_task<T>(
    runtime: &tokio::runtime::Runtime,
    calls: u64,
    mut call: impl AsyncFnMut() -> T,
) -> std::time::Duration {
    runtime.block_on(async {
        let started = std::time::Instant::now();
        for _ in 0..calls {
            std::hint::black_box(call().await);
        }
        started.elapsed()
    })
}

fn filter_calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let warm = pool(&runtime, "examples/hello-filter", Isolation::Instance);
    let mut instance = runtime.block_on(warm.checkout(context())).unwrap();
    let mut head = request_with_ten_headers();
    c.bench_function("warm on-request, 10 headers (hello-filter)", |b| {
        b.iter_custom(|calls| in_one_task(&runtime, calls, async || instance.on_request(&mut head).await.unwrap()))
    });

    let probe = pool(&runtime, "tests/plugins/probe", Isolation::Instance);
    let mut probe_instance = runtime.block_on(probe.checkout(context())).unwrap();
    let mut response = http::Response::new(()).into_parts().0;
    c.bench_function("warm on-response (probe)", |b| {
        b.iter_custom(|calls| {
            in_one_task(&runtime, calls, async || probe_instance.on_response(&mut head, &mut response).await.unwrap())
        })
    });
    drop(probe_instance);

    // Per request as the proxy does it: check out a warm instance, call, return it. A JavaScript
    // instance's heap grows with every call, so the pool retires and replaces instances as they
    // near their memory limit; that cost is part of the figure.
    use sluice_packages::Language;
    let javascript_component = scaffold(Language::JavaScript, "gate-js");
    let go_component = scaffold(Language::Go, "gate-go");
    let javascript = pool_of(&runtime, &javascript_component, Isolation::Instance);
    let go = pool_of(&runtime, &go_component, Isolation::Instance);
    for (name, pool) in [("hello-filter", &warm), ("JavaScript scaffold", &javascript), ("Go scaffold", &go)] {
        c.bench_function(&format!("checkout + warm on-request + return, 10 headers ({name})"), |b| {
            b.iter_custom(|calls| {
                in_one_task(&runtime, calls, async || {
                    let mut instance = pool.checkout(context()).await.unwrap();
                    instance.on_request(&mut head).await.unwrap()
                })
            })
        });
    }
    // A fresh, configured instance: what each one starts with.
    let fresh_javascript = pool_of(&runtime, &javascript_component, Isolation::Request);
    let javascript_instance = runtime.block_on(fresh_javascript.checkout(context())).unwrap();
    let fresh_go = pool_of(&runtime, &go_component, Isolation::Request);
    let go_instance = runtime.block_on(fresh_go.checkout(context())).unwrap();
    eprintln!(
        "linear memory of a configured instance: hello-filter {} KiB, JavaScript scaffold {} KiB, Go scaffold {} KiB",
        instance.memory_bytes() >> 10,
        javascript_instance.memory_bytes() >> 10,
        go_instance.memory_bytes() >> 10
    );
    drop((javascript_instance, go_instance));

    // Whether a warm instance's memory stays flat over many calls: 100,000 calls on one checked-out
    // JavaScript instance (the pool would retire it past three quarters of its limit).
    let mut javascript_instance = runtime.block_on(javascript.checkout(context())).unwrap();
    let before = javascript_instance.memory_bytes();
    let calls = runtime.block_on(async {
        for call in 0..100_000u32 {
            javascript_instance.on_request(&mut head).await.unwrap();
            if javascript_instance.memory_bytes() > (48 << 20) {
                return call + 1;
            }
        }
        100_000
    });
    eprintln!(
        "JavaScript scaffold, one warm instance: {} KiB before, {} KiB after {calls} calls ({:.2} KiB per call)",
        before >> 10,
        javascript_instance.memory_bytes() >> 10,
        (javascript_instance.memory_bytes() - before) as f64 / 1024.0 / f64::from(calls)
    );
    drop(javascript_instance);

    let fresh = pool(&runtime, "examples/hello-filter", Isolation::Request);
    c.bench_function("fresh instance: instantiate + configure + on-request (hello-filter)", |b| {
        b.iter_custom(|calls| {
            in_one_task(&runtime, calls, async || {
                let mut instance = fresh.checkout(context()).await.unwrap();
                instance.on_request(&mut head).await.unwrap()
            })
        })
    });
}

criterion_group!(benches, filter_calls);
criterion_main!(benches);
