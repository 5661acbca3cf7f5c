//! Tenant isolation under attack: how much a hostile tenant's filters slow another tenant down.
//!
//! One Sluice (in this process, its own worker threads) serves two tenants. Tenant B's route runs
//! `hello-filter`; tenant A's routes run `tests/plugins/hostile` in its infinite-loop and
//! memory-bomb modes, within A's grants (20 ms CPU per call, 16 MiB, 4 instances). B's latency is
//! measured under a steady closed-loop load, first alone, then while attackers hammer A's routes
//! as fast as they are answered. Rounds alternate the two phases; the report gives each phase's
//! median p50 and p99 across rounds and the ratio under attack.
//!
//! Run: `cargo run --release -p sluice-benches --bin isolation -- [--rounds 3] [--seconds 5]
//! [--attacker-cpu-ms-per-second 100] [--long-call-priority idle|0-19] [--attacks loop,memory]`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::config::Snapshot;
use sluice::server::Server;
use sluice_benches::plugin;

#[derive(Parser)]
struct Args {
    /// Rounds of (alone, under attack).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Tenant B's concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Concurrent attackers on tenant A's routes.
    #[arg(long, default_value_t = 8)]
    attackers: usize,
    /// Sluice's worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Tenant A's attacks, shared out among the attackers in turn.
    #[arg(long, value_delimiter = ',', default_value = "loop,memory")]
    attacks: Vec<Attack>,
    /// Tenant A's `cpu_ms_per_second` (omit for no rate limit).
    #[arg(long)]
    attacker_cpu_ms_per_second: Option<u64>,
    /// `server.long_call_priority`: `idle` or a niceness (omit for the default).
    #[arg(long)]
    long_call_priority: Option<String>,
}

/// What an attacker does to tenant A's filters.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Attack {
    /// Spin until the CPU limit per call.
    Loop,
    /// Grow memory until the memory limit.
    Memory,
}

/// A small origin answering 200 with a short body.
async fn origin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"hello from the origin\n"))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

fn config(origin: std::net::SocketAddr, cpu_ms_per_second: Option<u64>, priority: Option<&str>) -> String {
    format!(
        r#"
[server]
watch = false
{priority}
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.hostile]
source = "{hostile}"
[plugin.hello]
source = "{hello}"
[tenant.a]
cpu_ms_per_call = 20
memory_mb = 16
max_instances = 4
{cpu_rate}
[tenant.b]
[[route]]
path_prefix = "/a/loop"
tenant = "a"
upstream = "app"
filters = [{{ plugin = "hostile", config = {{ mode = "loop" }} }}]
[[route]]
path_prefix = "/a/memory"
tenant = "a"
upstream = "app"
filters = [{{ plugin = "hostile", config = {{ mode = "memory" }} }}]
[[route]]
path_prefix = "/b"
tenant = "b"
upstream = "app"
filters = [{{ plugin = "hello" }}]
"#,
        hostile = plugin("tests/plugins/hostile").display(),
        hello = plugin("examples/hello-filter").display(),
        cpu_rate = cpu_ms_per_second.map(|rate| format!("cpu_ms_per_second = {rate}")).unwrap_or_default(),
        priority = priority
            .map(|priority| match priority.parse::<u8>() {
                Ok(niceness) => format!("long_call_priority = {niceness}"),
                Err(_) => format!("long_call_priority = {priority:?}"),
            })
            .unwrap_or_default(),
    )
}

/// Sends requests to `url` back to back until `stop`, recording latencies (µs) when `record`;
/// returns them and how many answers came back.
async fn client_loop(url: String, stop: Arc<AtomicBool>, record: bool, failures: Arc<AtomicU64>) -> (Vec<u64>, usize) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().expect("url");
    let mut latencies = Vec::new();
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match client.get(uri.clone()).await {
            Ok(response) => {
                answered += 1;
                let ok = response.status().is_success();
                let _ = response.into_body().collect().await;
                if record {
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(started.elapsed().as_micros() as u64);
                }
            }
            Err(_) if record => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    (latencies, answered)
}

struct Phase {
    p50: u64,
    p99: u64,
    requests: usize,
    failures: u64,
    attacks: usize,
}

async fn phase(base: &str, args: &Args, attack: bool) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let victims: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client_loop(format!("{base}/b"), stop.clone(), true, failures.clone())))
        .collect();
    let attackers: Vec<_> = (0..if attack { args.attackers } else { 0 })
        .map(|index| {
            let path = match args.attacks[index % args.attacks.len()] {
                Attack::Loop => "/a/loop",
                Attack::Memory => "/a/memory",
            };
            // Attack answers (500s) are counted, not timed.
            tokio::spawn(client_loop(format!("{base}{path}"), stop.clone(), false, Arc::new(AtomicU64::new(0))))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for victim in victims {
        latencies.extend(victim.await.expect("victim client").0);
    }
    let mut attacks = 0;
    for attacker in attackers {
        attacks += attacker.await.expect("attacker").1;
    }
    latencies.sort_unstable();
    let at = |quantile: f64| latencies[((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1)];
    Phase {
        p50: at(0.50),
        p99: at(0.99),
        requests: latencies.len(),
        failures: failures.load(Ordering::Relaxed),
        attacks,
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn main() {
    let args = Args::parse();
    let sluice =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.workers).enable_all().build().expect("runtime");
    let clients = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let origin = clients.block_on(origin());
    let server = sluice.block_on(async {
        let snapshot = Snapshot::from_toml(
            &sluice::config::Services::with_default_cache().expect("the filter runtime starts"),
            &config(origin, args.attacker_cpu_ms_per_second, args.long_call_priority.as_deref()),
        )
        .expect("config");
        Server::start(snapshot).await.expect("start sluice")
    });
    let base = format!("http://{}", server.listener_addrs()[0].1);
    clients.block_on(async {
        // Warm up: instances, pooled connections.
        let quick = Args { seconds: 1, ..Args::parse() };
        phase(&base, &quick, true).await;
        let mut alone = Vec::new();
        let mut attacked = Vec::new();
        for round in 1..=args.rounds {
            let calm = phase(&base, &args, false).await;
            let hit = phase(&base, &args, true).await;
            println!(
                "round {round}: alone p50 {} µs p99 {} µs ({} requests, {} failed); under attack p50 {} µs p99 {} µs ({} requests, {} failed, {} attack requests answered)",
                calm.p50, calm.p99, calm.requests, calm.failures, hit.p50, hit.p99, hit.requests, hit.failures, hit.attacks
            );
            alone.push(calm);
            attacked.push(hit);
        }
        let (alone_p50, alone_p99) =
            (median(alone.iter().map(|p| p.p50).collect()), median(alone.iter().map(|p| p.p99).collect()));
        let (hit_p50, hit_p99) =
            (median(attacked.iter().map(|p| p.p50).collect()), median(attacked.iter().map(|p| p.p99).collect()));
        let failures: u64 = alone.iter().chain(&attacked).map(|p| p.failures).sum();
        println!(
            "tenant B, medians of {} rounds: alone p50 {alone_p50} µs p99 {alone_p99} µs; under attack p50 {hit_p50} µs p99 {hit_p99} µs; p99 ratio {:.2} (goal <= 1.5); B's failed requests: {failures}",
            args.rounds,
            hit_p99 as f64 / alone_p99 as f64
        );
    });
    sluice.block_on(server.shutdown_within(Duration::from_secs(2)));
}
