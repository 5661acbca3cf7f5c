//! The load harness: one origin, and the same load (wrk, keep-alive) sent to it directly and
//! through nginx, HAProxy, Sluice without filters and Sluice with a chain of three filters; and
//! cache hits: nginx with `proxy_cache` against Sluice with its HTTP cache, both told to keep
//! the origin's answers for a minute.
//!
//! Every proxy gets the same CPUs and the same number of workers; the origin and the load
//! generator get the other CPUs. Targets take turns within each round, so slow drift in a shared
//! machine's speed spreads over all of them, and each figure is the median of the rounds. The
//! table is printed and written as markdown, every figure also as a ratio to nginx's in the same
//! run.
//!
//! Run it through `benches/load.sh`, which installs nginx, HAProxy and wrk and builds what it
//! needs in release mode.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

/// Runs the same load through nginx, HAProxy and Sluice and reports them side by side.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Rounds; each figure is the median over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open keep-alive connections held by the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// CPUs for the proxy under test, as taskset reads them (default: the first half).
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// CPUs for the origin and the load generator (default: the rest).
    #[arg(long)]
    load_cpus: Option<String>,
    /// Where the markdown report goes.
    #[arg(long, default_value = "target/bench/load.md")]
    out: PathBuf,
    /// Only these targets (direct, nginx, haproxy, sluice, sluice-filters, nginx-cache,
    /// sluice-cache, sluice-deny-list, sluice-traced, ...; see `Target::key`), comma separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave out the HTTPS measurements (handshakes and requests over TLS).
    #[arg(long)]
    no_tls: bool,
}

/// What the load goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Nginx,
    Haproxy,
    Sluice,
    SluiceHyperClient,
    SluiceFilters,
    NginxCache,
    SluiceCache,
    SluiceDenyList,
    SluiceRateLimit,
    SluiceRateLimitRedis,
    SluiceRateLimitRedisApprox,
    SluiceTraced,
    SluiceTracedSampled,
    SluiceDashboard,
}

impl Target {
    const ALL: [Target; 15] = [
        Target::Direct,
        Target::Nginx,
        Target::Haproxy,
        Target::Sluice,
        Target::SluiceHyperClient,
        Target::SluiceFilters,
        Target::NginxCache,
        Target::SluiceCache,
        Target::SluiceDenyList,
        Target::SluiceRateLimit,
        Target::SluiceRateLimitRedis,
        Target::SluiceRateLimitRedisApprox,
        Target::SluiceTraced,
        Target::SluiceTracedSampled,
        Target::SluiceDashboard,
    ];

    /// The target a row's ratios are taken against: cache hits against nginx's cache hits, the
    /// deny list against the same Sluice route without it.
    fn baseline(self) -> Target {
        match self {
            Target::NginxCache | Target::SluiceCache => Target::NginxCache,
            Target::SluiceDenyList | Target::SluiceTraced | Target::SluiceTracedSampled | Target::SluiceDashboard => {
                Target::Sluice
            }
            Target::SluiceRateLimitRedis | Target::SluiceRateLimitRedisApprox => Target::SluiceRateLimit,
            _ => Target::Nginx,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::Sluice => "sluice",
            Target::SluiceHyperClient => "sluice-hyper-client",
            Target::SluiceFilters => "sluice-filters",
            Target::NginxCache => "nginx-cache",
            Target::SluiceCache => "sluice-cache",
            Target::SluiceDenyList => "sluice-deny-list",
            Target::SluiceRateLimit => "sluice-rate-limit",
            Target::SluiceRateLimitRedis => "sluice-rate-limit-redis",
            Target::SluiceRateLimitRedisApprox => "sluice-rate-limit-redis-approx",
            Target::SluiceTraced => "sluice-traced",
            Target::SluiceTracedSampled => "sluice-traced-1pct",
            Target::SluiceDashboard => "sluice-dashboard",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Direct => "origin directly (no proxy)",
            Target::Nginx => "nginx",
            Target::Haproxy => "HAProxy",
            Target::Sluice => "Sluice, no filters",
            Target::SluiceHyperClient => "Sluice, no filters, hyper's HTTP/1 client",
            Target::SluiceFilters => "Sluice, 3 filters",
            Target::NginxCache => "nginx, proxy_cache hits",
            Target::SluiceCache => "Sluice, cache hits",
            Target::SluiceDenyList => "Sluice, 100,000-range deny list (ratio to Sluice)",
            Target::SluiceRateLimit => "Sluice, rate-limit filter, memory backend",
            Target::SluiceRateLimitRedis => "Sluice, rate-limit on Redis, exact (ratio to memory)",
            Target::SluiceRateLimitRedisApprox => "Sluice, rate-limit on Redis, approximate (ratio to memory)",
            Target::SluiceTraced => "Sluice, tracing every request over OTLP (ratio to Sluice)",
            Target::SluiceTracedSampled => "Sluice, tracing 1% of requests over OTLP (ratio to Sluice)",
            Target::SluiceDashboard => "Sluice, dashboard open and polling (ratio to Sluice)",
        }
    }

    /// Whether the target needs the Redis the harness starts.
    fn needs_redis(self) -> bool {
        matches!(self, Target::SluiceRateLimitRedis | Target::SluiceRateLimitRedisApprox)
    }
}

/// The two responses every target is measured with.
const SIZES: [(&str, &str); 2] = [("/small", "100 B"), ("/large", "64 KiB")];

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// Proxy CPU time (user + system) per request; absent without a proxy.
    cpu_us_per_request: Option<f64>,
    /// The proxy's system calls per request (`perf stat`); absent without a proxy or perf.
    syscalls_per_request: Option<f64>,
    /// The proxy's context switches per request (`perf stat`), likewise.
    switches_per_request: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let repo = sluice_benches::repo_root();
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
    let proxy_cpus = args.proxy_cpus.clone().unwrap_or_else(|| cpu_list(0, cpus.div_ceil(2).max(1)));
    let load_cpus = args.load_cpus.clone().unwrap_or_else(|| cpu_list(cpus / 2, cpus));
    let workers = count_cpus(&proxy_cpus)?;
    let targets: Vec<Target> = if args.only.is_empty() {
        Target::ALL.to_vec()
    } else {
        Target::ALL.into_iter().filter(|target| args.only.iter().any(|key| key == target.key())).collect()
    };
    let work = repo.join("target/bench/load-run");
    std::fs::create_dir_all(&work)?;
    let release = repo.join("target/release");
    eprintln!(
        "==> {} round(s) of {} s per target and size, {} connections; proxies on CPUs {proxy_cpus} ({workers} worker(s)), origin and wrk on CPUs {load_cpus}",
        args.rounds, args.duration, args.connections
    );

    let origin = Origin::start(&release.join("bench-origin"), &load_cpus)?;
    let redis = match targets.iter().any(|target| target.needs_redis()) {
        true => Some(Redis::start(&load_cpus)?),
        false => None,
    };
    let redis_url = redis.as_ref().map(Redis::url);
    let mut samples: Vec<(Target, usize, Sample)> = Vec::new();
    for round in 1..=args.rounds {
        for &target in &targets {
            let behind = Behind { origin: origin.address, redis: redis_url.as_deref() };
            let proxy = Proxy::start(target, &repo, &work, behind, &proxy_cpus, workers, None)?;
            let address = proxy.as_ref().map_or(origin.address, |proxy| proxy.address);
            // Warm up: connections, pools, caches, the filters' instances.
            wrk(address, "/small", &load_cpus, args.connections, 1)?;
            for (size, (path, _)) in SIZES.iter().enumerate() {
                let cpu_before = proxy.as_ref().map(Proxy::cpu_seconds).transpose()?;
                let counting = proxy.as_ref().map(|proxy| SyscallCount::start(proxy, args.duration)).transpose()?;
                let (mut sample, requests) = wrk(address, path, &load_cpus, args.connections, args.duration)?;
                if let (Some(proxy), Some(before)) = (&proxy, cpu_before) {
                    let used = proxy.cpu_seconds()? - before;
                    sample.cpu_us_per_request = Some(used * 1e6 / requests as f64);
                }
                if let Some(Some((syscalls, switches))) = counting.map(SyscallCount::finish) {
                    sample.syscalls_per_request = Some(syscalls / requests as f64);
                    sample.switches_per_request = Some(switches / requests as f64);
                }
                eprintln!(
                    "    round {round}: {:<22} {:>6}  {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  cpu {}  syscalls {}",
                    target.label(),
                    SIZES[size].1,
                    sample.requests_per_second,
                    sample.p50_us,
                    sample.p99_us,
                    sample.cpu_us_per_request.map_or("-".into(), |cpu| format!("{cpu:.1} µs/req")),
                    sample.syscalls_per_request.map_or("-".into(), |count| format!("{count:.2}/req")),
                );
                samples.push((target, size, sample));
            }
        }
    }

    let mut tls_samples: Vec<(Target, TlsSample)> = Vec::new();
    let tls_targets: Vec<Target> = targets
        .iter()
        .copied()
        .filter(|target| matches!(target, Target::Nginx | Target::Haproxy | Target::Sluice))
        .collect();
    if !args.no_tls && !tls_targets.is_empty() {
        let certificate = BenchCertificate::create(&work)?;
        for round in 1..=args.rounds {
            for &target in &tls_targets {
                let behind = Behind { origin: origin.address, redis: None };
                let proxy = Proxy::start(target, &repo, &work, behind, &proxy_cpus, workers, Some(&certificate))?
                    .context("a proxy target")?;
                let url_address = proxy.address;
                wrk_url(&format!("https://{url_address}/small"), &load_cpus, args.connections, 1)?;
                let (https, _) =
                    wrk_url(&format!("https://{url_address}/small"), &load_cpus, args.connections, args.duration)?;
                let full = handshakes(url_address, &load_cpus, args.duration, false)?;
                let resumed = handshakes(url_address, &load_cpus, args.duration, true)?;
                let sample = TlsSample {
                    requests_per_second: https.requests_per_second,
                    p99_us: https.p99_us,
                    full_handshakes: full,
                    resumed_handshakes: resumed,
                };
                eprintln!(
                    "    round {round}: {:<22} HTTPS {:>9.0} req/s  p99 {:>7.0} µs  handshakes: full {:>6.0}/s  resumed {:>6.0}/s",
                    target.label(),
                    sample.requests_per_second,
                    sample.p99_us,
                    sample.full_handshakes,
                    sample.resumed_handshakes,
                );
                tls_samples.push((target, sample));
            }
        }
    }
    drop(origin);

    let mut report = report(&args, &targets, &samples, &proxy_cpus, &load_cpus, workers);
    report.push_str(&tls_report(&tls_targets, &tls_samples));
    println!("{report}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &report).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("==> written to {}", args.out.display());
    Ok(())
}

/// The benchmark origin, pinned to the load CPUs.
struct Origin {
    child: Child,
    address: SocketAddr,
}

impl Origin {
    fn start(binary: &Path, cpus: &str) -> Result<Self> {
        let mut child = Command::new("taskset")
            .args(["-c", cpus])
            .arg(binary)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("origin stdout")?).read_line(&mut line)?;
        let address = line.trim().strip_prefix("listening on ").context("origin did not say where it listens")?;
        Ok(Self { address: address.parse()?, child })
    }
}

/// A `redis-server` for the rate-limit targets, on the load CPUs, without persistence.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(cpus: &str) -> Result<Self> {
        let port = free_port()?.port();
        let child = Command::new("taskset")
            .args(["-c", cpus, "redis-server", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a proxy under test sends to: the origin, and the Redis of the rate-limit targets.
#[derive(Debug, Clone, Copy)]
struct Behind<'a> {
    origin: SocketAddr,
    redis: Option<&'a str>,
}

/// A proxy under test, stopped when dropped.
struct Proxy {
    child: Child,
    address: SocketAddr,
    /// For the dashboard target: what an open dashboard reads, read every second.
    dashboard: Option<DashboardReader>,
}

/// Reads what an open dashboard page reads from the admin listener (`/status`, `/live`,
/// `/upstreams`, `/cache` every second, `/routes` once), on a thread of its own, until dropped.
/// The page's own rendering happens in a browser, elsewhere: only what it asks of the proxy is
/// the proxy's cost.
struct DashboardReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl DashboardReader {
    fn start(admin: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let read = |path: &str| -> bool {
                let Ok(mut stream) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else { return false };
                let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
                let mut answer = Vec::new();
                stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_end(&mut answer).is_ok()
                    && answer.starts_with(b"HTTP/1.1 200")
            };
            let mut reads = u64::from(read("/routes"));
            while !stopping.load(Ordering::Relaxed) {
                for path in ["/status", "/live", "/upstreams", "/cache"] {
                    reads += u64::from(read(path));
                }
                // The page's poll interval; a harness thread, not a test: a pause is what it is.
                std::thread::sleep(Duration::from_secs(1));
            }
            reads
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for DashboardReader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reads) = self.thread.take().and_then(|thread| thread.join().ok()) {
            eprintln!("    (the dashboard's reads answered: {reads})");
        }
    }
}

impl Proxy {
    /// Writes the target's configuration, starts it on the proxy CPUs and waits until it forwards.
    fn start(
        target: Target,
        repo: &Path,
        work: &Path,
        behind: Behind<'_>,
        cpus: &str,
        workers: usize,
        tls: Option<&BenchCertificate>,
    ) -> Result<Option<Self>> {
        let (origin, redis) = (behind.origin, behind.redis);
        let address = free_port()?;
        let mut admin = None;
        let mut command = Command::new("taskset");
        command.args(["-c", cpus]);
        match target {
            Target::Direct => return Ok(None),
            Target::Nginx | Target::NginxCache => {
                let config = work.join("nginx.conf");
                let cache = target == Target::NginxCache;
                std::fs::write(&config, nginx_config(work, address, origin, workers, tls, cache))?;
                command.args(["nginx", "-p"]).arg(work).arg("-c").arg(&config);
            }
            Target::Haproxy => {
                let config = work.join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(address, origin, workers, tls))?;
                command.args(["haproxy", "-db", "-f"]).arg(&config);
            }
            Target::Sluice
            | Target::SluiceHyperClient
            | Target::SluiceFilters
            | Target::SluiceCache
            | Target::SluiceDenyList
            | Target::SluiceRateLimit
            | Target::SluiceRateLimitRedis
            | Target::SluiceRateLimitRedisApprox
            | Target::SluiceTraced
            | Target::SluiceTracedSampled
            | Target::SluiceDashboard => {
                let config = work.join(format!("{}.toml", target.key()));
                let filters = target == Target::SluiceFilters;
                let cache = target == Target::SluiceCache;
                let mut text = sluice_config(repo, address, origin, filters, cache, tls);
                if target == Target::SluiceDenyList {
                    let list = work.join("deny-100k.txt");
                    std::fs::write(&list, deny_list(100_000))?;
                    let _ = writeln!(text, "access = {{ deny_file = \"{}\" }}", list.display());
                }
                if let Some(mode) = match target {
                    Target::SluiceRateLimit => Some(("memory", "exact")),
                    Target::SluiceRateLimitRedis => Some(("shared", "exact")),
                    Target::SluiceRateLimitRedisApprox => Some(("shared", "approximate")),
                    _ => None,
                } {
                    text.push_str(&rate_limited(repo, mode, redis)?);
                }
                if let Some(ratio) = match target {
                    Target::SluiceTraced => Some(1.0),
                    Target::SluiceTracedSampled => Some(0.01),
                    _ => None,
                } {
                    // The benchmark origin answers the OTLP exports (any path, 200): the spans
                    // are encoded and sent as they would be to a collector.
                    let _ = writeln!(text, "[tracing]\nendpoint = \"http://{origin}\"\nsampling_ratio = {ratio}");
                }
                // Every Sluice has its admin listener (last: the lines above add to the route's
                // table); only the dashboard target has it read.
                let admin_address = free_port()?;
                let _ = writeln!(text, "\n[admin]\nbind = \"{admin_address}\"");
                admin = Some(admin_address);
                std::fs::write(&config, text)?;
                let sluice = repo.join("target/release/sluice");
                // `check` builds and compiles the filters first, so the start below is quick.
                let checked =
                    Command::new(&sluice).arg("check").arg("--config").arg(&config).stdout(Stdio::null()).status()?;
                if !checked.success() {
                    bail!("sluice check refused {}", config.display());
                }
                if target == Target::SluiceHyperClient {
                    // The same proxy with hyper's client to the upstream, to keep the choice of
                    // client measured.
                    command.env("SLUICE_UPSTREAM_HTTP1", "hyper");
                }
                command
                    .arg(&sluice)
                    .args(["--log-level", "warn", "run", "--workers", &workers.to_string(), "--config"])
                    .arg(&config);
            }
        }
        let child = command.stdout(Stdio::null()).spawn().with_context(|| format!("starting {}", target.key()))?;
        let mut proxy = Self { child, address, dashboard: None };
        proxy.wait_until_ready(target, tls.is_some())?;
        if target == Target::SluiceDashboard {
            proxy.dashboard = admin.map(DashboardReader::start);
        }
        Ok(Some(proxy))
    }

    /// Waits until the proxy forwards a request (over TLS: until it accepts connections).
    fn wait_until_ready(&mut self, target: Target, tls: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited at start ({status})", target.key());
            }
            let ready =
                if tls { TcpStream::connect(self.address).map(drop).map_err(Into::into) } else { probe(self.address) };
            match ready {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() > deadline => bail!("{} never answered: {error}", target.key()),
                // A harness polling a process it just started, not a test: a short pause is fine.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// User plus system CPU seconds of the proxy and its child processes (nginx's workers).
    fn cpu_seconds(&self) -> Result<f64> {
        let root = self.child.id();
        let mut pids = vec![root];
        pids.extend(children_of(root)?);
        let ticks_per_second = clock_ticks_per_second()?;
        let mut ticks = 0u64;
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // Fields after the command name (which may hold spaces) start at state, field 3.
            let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            ticks += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        }
        Ok(ticks as f64 / ticks_per_second)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // taskset exec()s the proxy, so the child is the proxy itself; nginx's and HAProxy's
        // workers leave with their master on SIGTERM.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn children_of(parent: u32) -> Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let parent_field = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent_field == Some(&parent.to_string()) {
            children.push(pid);
        }
    }
    Ok(children)
}

fn clock_ticks_per_second() -> Result<f64> {
    let output = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

/// `perf stat` counting the proxy's system calls and context switches (every thread of every
/// process of it) while one measurement runs; nothing when perf cannot count here.
struct SyscallCount {
    child: Child,
}

impl SyscallCount {
    fn start(proxy: &Proxy, seconds: u64) -> Result<Self> {
        let root = proxy.child.id();
        let mut pids = vec![root];
        pids.extend(children_of(root)?);
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter,context-switches", "-p", &pids.join(",")])
            .args(["--", "sleep", &seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting perf stat")?;
        Ok(Self { child })
    }

    /// System calls and context switches counted, once perf has finished.
    fn finish(self) -> Option<(f64, f64)> {
        let output = self.child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&output.stderr);
        let count = |event: &str| -> Option<f64> {
            text.lines().find(|line| line.split(',').nth(2) == Some(event))?.split(',').next()?.parse().ok()
        };
        Some((count("raw_syscalls:sys_enter")?, count("context-switches")?))
    }
}

/// One request with a fresh connection: the proxy is up when it forwards a 200.
fn probe(address: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /small HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("answered {:?}", answer.lines().next().unwrap_or_default());
    }
    Ok(())
}

/// Runs wrk and reads its summary; returns the sample and the number of requests.
fn wrk(address: SocketAddr, path: &str, cpus: &str, connections: usize, seconds: u64) -> Result<(Sample, u64)> {
    wrk_url(&format!("http://{address}{path}"), cpus, connections, seconds)
}

fn wrk_url(url: &str, cpus: &str, connections: usize, seconds: u64) -> Result<(Sample, u64)> {
    let threads = count_cpus(cpus)?;
    let output = Command::new("taskset")
        .args(["-c", cpus, "wrk", "--latency"])
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<(Sample, u64)> {
    let mut sample = Sample::default();
    let mut requests = 0;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(value)) => sample.p50_us = micros(value)?,
            (Some("99%"), Some(value)) => sample.p99_us = micros(value)?,
            (Some("Requests/sec:"), Some(value)) => sample.requests_per_second = value.parse()?,
            (Some(count), Some("requests")) => requests = count.parse()?,
            (Some("Non-2xx"), _) => bail!("the target answered errors: {line}"),
            // Timeouts and resets under load are failures the table must not hide.
            (Some("Socket"), Some("errors:")) => bail!("socket errors: {line}"),
            _ => {}
        }
    }
    if requests == 0 || sample.requests_per_second == 0.0 {
        bail!("could not read wrk's summary:\n{text}");
    }
    Ok((sample, requests))
}

/// wrk's latency figures (`812.00us`, `1.20ms`, `1.01s`) in microseconds.
fn micros(value: &str) -> Result<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic()).context("latency without unit")?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number,
        "ms" => number * 1e3,
        "s" => number * 1e6,
        "m" => number * 60e6,
        other => bail!("unknown latency unit {other}"),
    })
}

fn free_port() -> Result<SocketAddr> {
    // The port is free now and reused a moment later; a harness on loopback can live with that.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn cpu_list(from: usize, to: usize) -> String {
    if to <= from + 1 { from.to_string() } else { format!("{from}-{}", to - 1) }
}

fn count_cpus(list: &str) -> Result<usize> {
    let mut count = 0;
    for part in list.split(',') {
        count += match part.split_once('-') {
            Some((low, high)) => high.trim().parse::<usize>()? - low.trim().parse::<usize>()? + 1,
            None => 1,
        };
    }
    Ok(count)
}

fn nginx_config(
    work: &Path,
    address: SocketAddr,
    origin: SocketAddr,
    workers: usize,
    tls: Option<&BenchCertificate>,
    cache: bool,
) -> String {
    let work = work.display();
    // Kept a minute whatever the origin says, and concurrent misses wait for one fetch, as
    // Sluice's `default_ttl` and coalescing do.
    let (cache_zone, cache_use) = if cache {
        (
            format!(
                "proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=10m use_temp_path=off;"
            ),
            "proxy_cache bench;\n            proxy_cache_valid 200 1m;\n            proxy_cache_lock on;",
        )
    } else {
        (String::new(), "")
    };
    let listen = match tls {
        None => format!("listen {address} reuseport;"),
        Some(certificate) => format!(
            "listen {address} ssl reuseport;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;",
            certificate.cert.display(),
            certificate.key.display()
        ),
    };
    format!(
        r#"worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    {cache_zone}
    upstream origin {{
        server {origin};
        keepalive 256;
    }}
    server {{
        {listen}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Room for a 64 KiB response in memory, as the other proxies stream it.
            proxy_buffers 16 8k;
            {cache_use}
        }}
    }}
}}
"#
    )
}

fn haproxy_config(address: SocketAddr, origin: SocketAddr, workers: usize, tls: Option<&BenchCertificate>) -> String {
    let bind = match tls {
        None => address.to_string(),
        Some(certificate) => format!("{address} ssl crt {} alpn http/1.1", certificate.combined.display()),
    };
    format!(
        r#"global
    nbthread {workers}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind {bind}
    default_backend origin
backend origin
    server origin {origin}
"#
    )
}

fn sluice_config(
    repo: &Path,
    address: SocketAddr,
    origin: SocketAddr,
    with_filters: bool,
    with_cache: bool,
    tls: Option<&BenchCertificate>,
) -> String {
    let tls = tls.map_or(String::new(), |certificate| {
        format!(
            "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
            certificate.cert.display(),
            certificate.key.display()
        )
    });
    let mut config = format!(
        r#"[[listener]]
name = "bench"
bind = "{address}"
{tls}

[upstream.origin]
servers = [{{ addr = "{origin}" }}]

[[route]]
name = "all"
path_prefix = "/"
upstream = "origin"
"#
    );
    if with_cache {
        config.push_str("cache = { default_ttl = \"60s\" }\n");
    }
    if with_filters {
        // Three request-phase filters, each setting a header; the real filters of plugins/ take
        // their place once they exist.
        config.push_str("filters = [{ plugin = \"hello\" }, { plugin = \"hello\" }, { plugin = \"hello\" }]\n");
        let _ = write!(config, "\n[plugin.hello]\nsource = \"{}\"\n", repo.join("examples/hello-filter").display());
    }
    config
}

/// The rate-limit filter on the route (a limit no run reaches: every request is counted and
/// passes), its tenant's key-value state in `backend` (`memory`, or `shared`: the Redis at
/// `redis`), counting `exact` or `approximate`.
fn rate_limited(repo: &Path, (backend, mode): (&str, &str), redis: Option<&str>) -> Result<String> {
    let mut text = format!(
        "tenant = \"bench\"\nfilters = [{{ plugin = \"rate_limit\", config = {{ limit = 1000000000, period = \"1h\", headers = false, mode = \"{mode}\" }} }}]\n"
    );
    let _ = write!(
        text,
        "\n[plugin.rate_limit]\nsource = \"{}\"\n[tenant.bench]\nkv_backend = \"{backend}\"\n",
        repo.join("plugins/rate-limit").display()
    );
    if backend == "shared" {
        let redis = redis.context("the Redis targets need the harness's redis-server")?;
        let _ = write!(text, "[redis.shared]\nurl = \"{redis}\"\ntimeout = \"50ms\"\npool_size = 2\n");
    }
    Ok(text)
}

/// `count` distinct ranges, IPv4 (/16 to /32) and IPv6 (/32 to /128), none covering loopback
/// (the load's own address), one per line as a `deny_file` holds them.
fn deny_list(count: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut text = String::with_capacity(count * 24);
    let mut written = 0;
    while written < count {
        if written % 4 == 3 {
            let address = std::net::Ipv6Addr::from(rng.random::<u128>() | (0x2000u128 << 112));
            let _ = writeln!(text, "{address}/{}", rng.random_range(32..=128));
        } else {
            let address = std::net::Ipv4Addr::from(rng.random::<u32>());
            if address.octets()[0] == 127 {
                continue;
            }
            let prefix = rng.random_range(16..=32);
            let _ = writeln!(
                text,
                "{}/{prefix}",
                ipnet::Ipv4Net::new(address, prefix).map_or(address, |net| net.network())
            );
        }
        written += 1;
    }
    text
}

/// An ECDSA P-256 certificate for the HTTPS measurements, made with openssl for this run.
struct BenchCertificate {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file, as HAProxy reads them.
    combined: PathBuf,
}

impl BenchCertificate {
    fn create(work: &Path) -> Result<Self> {
        let (cert, key, combined) = (work.join("bench-cert.pem"), work.join("bench-key.pem"), work.join("bench.pem"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        if !status.success() {
            bail!("openssl could not make the benchmark certificate");
        }
        std::fs::write(&combined, [std::fs::read(&cert)?, std::fs::read(&key)?].concat())?;
        Ok(Self { cert, key, combined })
    }
}

/// What one round measured over TLS.
#[derive(Debug, Clone, Copy)]
struct TlsSample {
    requests_per_second: f64,
    p99_us: f64,
    full_handshakes: f64,
    resumed_handshakes: f64,
}

/// Handshakes per second, one connection after another, each with a request for `/small`
/// (openssl s_time; `resume` reuses the first connection's session).
fn handshakes(address: SocketAddr, cpus: &str, seconds: u64, resume: bool) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new("taskset")
        .args(["-c", cpus, "openssl", "s_time", "-connect"])
        .arg(address.to_string())
        .arg(if resume { "-reuse" } else { "-new" })
        .args(["-time", &seconds.to_string(), "-www", "/small"])
        .output()
        .context("running openssl s_time")?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    let connections: f64 = text
        .lines()
        .find_map(|line| line.split_once(" connections in ").map(|(count, _)| count.trim().to_owned()))
        .with_context(|| format!("could not read s_time's summary:\n{text}"))?
        .parse()?;
    Ok(connections / elapsed)
}

fn tls_report(targets: &[Target], samples: &[(Target, TlsSample)]) -> String {
    if samples.is_empty() {
        return String::new();
    }
    let summary = |target: Target| -> Option<TlsSample> {
        let runs: Vec<TlsSample> = samples.iter().filter(|(t, _)| *t == target).map(|(_, sample)| *sample).collect();
        if runs.is_empty() {
            return None;
        }
        let of = |field: fn(&TlsSample) -> f64| median(runs.iter().map(field).collect());
        Some(TlsSample {
            requests_per_second: of(|sample| sample.requests_per_second),
            p99_us: of(|sample| sample.p99_us),
            full_handshakes: of(|sample| sample.full_handshakes),
            resumed_handshakes: of(|sample| sample.resumed_handshakes),
        })
    };
    let ratio = |value: f64, base: Option<f64>| base.map_or(String::new(), |base| format!(" ({:.2}×)", value / base));
    let nginx = summary(Target::Nginx);
    let mut out = String::from(
        "**HTTPS** (ECDSA P-256 certificate; keep-alive requests for 100 B with wrk; handshakes one after another \
         with `openssl s_time`, each followed by one request)\n\n\
         | target | HTTPS requests/s | p99 latency | full handshakes/s | resumed handshakes/s |\n| --- | --- | --- | --- | --- |\n",
    );
    for &target in targets {
        let Some(sample) = summary(target) else { continue };
        let _ = writeln!(
            out,
            "| {} | {:.0}{} | {:.0} µs{} | {:.0}{} | {:.0}{} |",
            target.label(),
            sample.requests_per_second,
            ratio(sample.requests_per_second, nginx.map(|n| n.requests_per_second)),
            sample.p99_us,
            ratio(sample.p99_us, nginx.map(|n| n.p99_us)),
            sample.full_handshakes,
            ratio(sample.full_handshakes, nginx.map(|n| n.full_handshakes)),
            sample.resumed_handshakes,
            ratio(sample.resumed_handshakes, nginx.map(|n| n.resumed_handshakes)),
        );
    }
    out.push('\n');
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 }
}

/// The medians per target and size, with ratios to nginx.
fn report(
    args: &Args,
    targets: &[Target],
    samples: &[(Target, usize, Sample)],
    proxy_cpus: &str,
    load_cpus: &str,
    workers: usize,
) -> String {
    let summary = |target: Target, size: usize| -> Option<Sample> {
        let runs: Vec<Sample> =
            samples.iter().filter(|(t, s, _)| *t == target && *s == size).map(|(_, _, sample)| *sample).collect();
        if runs.is_empty() {
            return None;
        }
        let of = |field: fn(&Sample) -> f64| median(runs.iter().map(field).collect());
        let optional = |field: fn(&Sample) -> Option<f64>| {
            let values: Vec<f64> = runs.iter().filter_map(field).collect();
            (!values.is_empty()).then(|| median(values))
        };
        Some(Sample {
            requests_per_second: of(|sample| sample.requests_per_second),
            p50_us: of(|sample| sample.p50_us),
            p99_us: of(|sample| sample.p99_us),
            cpu_us_per_request: optional(|sample| sample.cpu_us_per_request),
            syscalls_per_request: optional(|sample| sample.syscalls_per_request),
            switches_per_request: optional(|sample| sample.switches_per_request),
        })
    };
    let ratio = |value: f64, base: Option<f64>| base.map_or(String::new(), |base| format!(" ({:.2}×)", value / base));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Keep-alive HTTP/1.1, {} connections, {} s per measurement, median of {} round(s); proxies on CPUs {proxy_cpus} \
         with {workers} worker(s) each, origin and wrk on CPUs {load_cpus}. Ratios in brackets are to nginx in the same run \
         (cache rows: to nginx's proxy_cache hits).\n",
        args.connections, args.duration, args.rounds
    );
    for (size, (_, size_label)) in SIZES.iter().enumerate() {
        let _ = writeln!(out, "**{size_label} responses**\n");
        let _ = writeln!(out, "| target | requests/s | p50 latency | p99 latency | proxy CPU per request |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for &target in targets {
            let Some(sample) = summary(target, size) else { continue };
            let nginx = summary(target.baseline(), size);
            let cpu = match sample.cpu_us_per_request {
                Some(cpu) => format!("{cpu:.1} µs{}", ratio(cpu, nginx.and_then(|n| n.cpu_us_per_request))),
                None => "—".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {:.0}{} | {:.0} µs{} | {:.0} µs{} | {cpu} |",
                target.label(),
                sample.requests_per_second,
                ratio(sample.requests_per_second, nginx.map(|n| n.requests_per_second)),
                sample.p50_us,
                ratio(sample.p50_us, nginx.map(|n| n.p50_us)),
                sample.p99_us,
                ratio(sample.p99_us, nginx.map(|n| n.p99_us)),
            );
        }
        let counted: Vec<(Target, Sample)> = targets
            .iter()
            .filter_map(|&target| Some((target, summary(target, size)?)))
            .filter(|(_, sample)| sample.syscalls_per_request.is_some())
            .collect();
        if !counted.is_empty() {
            let _ = writeln!(
                out,
                "\nThe proxy's system calls and context switches per request (`perf stat`, every thread):\n"
            );
            let _ = writeln!(out, "| target | system calls | context switches |");
            let _ = writeln!(out, "| --- | --- | --- |");
            for (target, sample) in counted {
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {:.3} |",
                    target.label(),
                    sample.syscalls_per_request.unwrap_or_default(),
                    sample.switches_per_request.unwrap_or_default()
                );
            }
        }
        if let (Some(plain), Some(filtered)) = (summary(Target::Sluice, size), summary(Target::SluiceFilters, size)) {
            let _ = writeln!(
                out,
                "\nThree-filter chain / no filters: {:.2}× the requests per second, p99 {:.2}×.",
                filtered.requests_per_second / plain.requests_per_second,
                filtered.p99_us / plain.p99_us
            );
        }
        if let (Some(nginx), Some(sluice)) = (summary(Target::NginxCache, size), summary(Target::SluiceCache, size)) {
            let _ = writeln!(
                out,
                "\nCache hits, Sluice / nginx proxy_cache: {:.2}× the requests per second, p99 {:.2}×.",
                sluice.requests_per_second / nginx.requests_per_second,
                sluice.p99_us / nginx.p99_us
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_summaries() {
        let text = "Running 5s test @ http://127.0.0.1:1/small\n  1 threads and 64 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.00ms\n     90%    1.10ms\n     99%    2.50ms\n  123456 requests in 5.00s, 30.00MB read\nRequests/sec:  24691.20\nTransfer/sec:      6.00MB\n";
        let (sample, requests) = parse_wrk(text).unwrap();
        assert_eq!(requests, 123_456);
        assert_eq!(sample.p50_us, 812.0);
        assert_eq!(sample.p99_us, 2500.0);
        assert_eq!(sample.requests_per_second, 24691.2);
        assert!(parse_wrk(&format!("{text}  Non-2xx or 3xx responses: 3\n")).is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpus("0").unwrap(), 1);
        assert_eq!(count_cpus("0-3,8").unwrap(), 5);
        assert_eq!(cpu_list(0, 1), "0");
        assert_eq!(cpu_list(8, 16), "8-15");
    }
}
