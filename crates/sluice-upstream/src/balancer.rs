//! Spreading requests across an upstream's servers: smooth weighted round-robin, weighted
//! least-connections, power of two choices over latency, and consistent hashing (Maglev) on the
//! client address, a header or a cookie. Every balancer picks only among the servers that are
//! available and not already tried for this request.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use rand::Rng;

use super::server::{Availability, ServerState};

/// Which balancer an upstream uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancerKind {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// The server with the fewest requests in flight for its weight.
    LeastConnections,
    /// Of two random servers, the one with the lower latency average times load.
    PowerOfTwoChoices,
    /// Consistent hashing: the same key goes to the same server while it is available.
    Hash(HashKey),
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address.
    ClientIp,
    /// A request header's value (the client's address when absent).
    Header(HeaderName),
    /// A cookie's value (the client's address when absent).
    Cookie(String),
}

/// What a balancer may look at in the request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client's address.
    pub client_ip: IpAddr,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// A balancer with its state.
#[derive(Debug)]
pub struct Balancer {
    kind: BalancerKind,
    slow_start: Option<Duration>,
    /// Round-robin position (even weights) and tie-breaker for least-connections.
    counter: AtomicUsize,
    /// Smooth round-robin's running weights.
    smooth: Mutex<Vec<f64>>,
    maglev: Option<Maglev>,
    /// Equal weights and no slow start: round-robin is a counter.
    even: bool,
}

impl Balancer {
    /// A balancer for servers with these weights.
    pub fn new(kind: BalancerKind, weights: &[u32], slow_start: Option<Duration>) -> Self {
        let maglev = matches!(kind, BalancerKind::Hash(_)).then(|| Maglev::new(weights));
        let even = slow_start.is_none() && weights.iter().all(|&weight| weight == weights[0]);
        let smooth = Mutex::new(vec![0.0; weights.len()]);
        Self { kind, slow_start, counter: AtomicUsize::new(0), smooth, maglev, even }
    }

    /// The balancer's kind.
    pub fn kind(&self) -> &BalancerKind {
        &self.kind
    }

    /// The index of the server for this request, skipping those in `tried` and those not
    /// available. When no server is available at all, every untried server is a candidate:
    /// sending to a server that may be down beats refusing outright (a panic mode, as health
    /// checks can be wrong when everything looks down at once).
    pub fn pick(&self, servers: &[ServerState], context: &PickContext<'_>, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        // The common case, without gathering candidates: even round-robin, first try.
        if tried.is_empty() && self.kind == BalancerKind::RoundRobin && self.even {
            let index = self.counter.fetch_add(1, Ordering::Relaxed) % servers.len();
            if servers[index].availability(now) == Availability::Available {
                return Some(index);
            }
        }
        let untried = |index: usize| !tried.contains(&index);
        let mut candidates: Vec<usize> = (0..servers.len())
            .filter(|&index| untried(index) && servers[index].availability(now) == Availability::Available)
            .collect();
        if candidates.is_empty() {
            candidates = (0..servers.len()).filter(|&index| untried(index)).collect();
        }
        if candidates.is_empty() {
            return None;
        }
        let weight = |index: usize| servers[index].effective_weight(self.slow_start, now);
        Some(match &self.kind {
            BalancerKind::RoundRobin => self.smooth_round_robin(&candidates, weight),
            BalancerKind::LeastConnections => {
                let start = self.counter.fetch_add(1, Ordering::Relaxed);
                let load = |index: usize| (servers[index].in_flight() as f64 + 1.0) / weight(index);
                // Start the scan at a rotating place so that ties spread.
                (0..candidates.len())
                    .map(|offset| candidates[(start + offset) % candidates.len()])
                    .min_by(|&a, &b| load(a).total_cmp(&load(b)))
                    .expect("candidates is not empty")
            }
            BalancerKind::PowerOfTwoChoices => {
                if candidates.len() == 1 {
                    candidates[0]
                } else {
                    let mut random = rand::rng();
                    let first = random.random_range(0..candidates.len());
                    let mut second = random.random_range(0..candidates.len() - 1);
                    if second >= first {
                        second += 1;
                    }
                    let cost = |index: usize| {
                        // Unmeasured servers count as fast, so each gets tried.
                        let latency = servers[index].latency_ewma_us().max(1) as f64;
                        latency * (servers[index].in_flight() as f64 + 1.0) / weight(index)
                    };
                    let (a, b) = (candidates[first], candidates[second]);
                    if cost(b) < cost(a) { b } else { a }
                }
            }
            BalancerKind::Hash(key) => {
                let maglev = self.maglev.as_ref().expect("hash balancers have a table");
                let hash = hash_of(key, context);
                maglev.lookup(hash, |index| candidates.contains(&index)).unwrap_or(candidates[0])
            }
        })
    }

    fn smooth_round_robin(&self, candidates: &[usize], weight: impl Fn(usize) -> f64) -> usize {
        if self.even {
            return candidates[self.counter.fetch_add(1, Ordering::Relaxed) % candidates.len()];
        }
        // Each candidate gains its weight; the one ahead is chosen and pays back the total. Only
        // candidates take part, so a server that is down neither gains nor is owed a backlog.
        let mut current = self.smooth.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut total = 0.0;
        let mut best = candidates[0];
        for &index in candidates {
            let w = weight(index);
            total += w;
            current[index] += w;
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total;
        best
    }
}

fn hash_of(key: &HashKey, context: &PickContext<'_>) -> u64 {
    let mut hasher = DefaultHasher::new();
    let value = match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => context.headers.get(name).map(|value| value.as_bytes().to_vec()),
        HashKey::Cookie(name) => cookie(context.headers, name).map(|value| value.as_bytes().to_vec()),
    };
    match value {
        Some(bytes) => bytes.hash(&mut hasher),
        None => context.client_ip.hash(&mut hasher),
    }
    hasher.finish()
}

/// A cookie's value from the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Maglev consistent hashing: a lookup table in which every server owns entries in proportion to
/// its weight, filled from per-server permutations so that removing a server moves only the keys
/// it owned (and few others).
#[derive(Debug)]
struct Maglev {
    table: Vec<u16>,
}

/// Table size: a prime well above the number of servers times their weights.
const MAGLEV_SIZE: usize = 65_537;

impl Maglev {
    fn new(weights: &[u32]) -> Self {
        let size = MAGLEV_SIZE;
        let count = weights.len();
        let permutation = |server: usize, salt: u64| {
            let mut hasher = DefaultHasher::new();
            (server, salt).hash(&mut hasher);
            hasher.finish()
        };
        let offsets: Vec<usize> = (0..count).map(|server| (permutation(server, 1) % size as u64) as usize).collect();
        let skips: Vec<usize> =
            (0..count).map(|server| (permutation(server, 2) % (size as u64 - 1)) as usize + 1).collect();
        let mut next = vec![0usize; count];
        let mut table = vec![u16::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for server in 0..count {
                // A server with weight w takes w entries per round.
                for _ in 0..weights[server].max(1) {
                    let mut slot = (offsets[server] + next[server] * skips[server]) % size;
                    while table[slot] != u16::MAX {
                        next[server] += 1;
                        slot = (offsets[server] + next[server] * skips[server]) % size;
                    }
                    table[slot] = server as u16;
                    next[server] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Self { table }
    }

    /// The server for `hash` among those `allowed`: its own entry, else the entries found by
    /// rehashing, so that keys of servers still allowed never move.
    fn lookup(&self, hash: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let mut probe = hash;
        for _ in 0..32 {
            let server = usize::from(self.table[(probe % self.table.len() as u64) as usize]);
            if allowed(server) {
                return Some(server);
            }
            probe = probe.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5851_F42D_4C95_7F2D;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::UpstreamServer;

    fn servers(weights: &[u32]) -> Vec<ServerState> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| {
                let authority = format!("10.0.0.{index}:80").parse().unwrap();
                ServerState::new(
                    "test",
                    UpstreamServer { authority, weight },
                    &crate::metrics::UpstreamMetrics::default(),
                )
            })
            .collect()
    }

    fn context(headers: &HeaderMap) -> PickContext<'_> {
        PickContext { client_ip: "192.0.2.1".parse().unwrap(), headers }
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let servers = servers(&[5, 1, 1]);
        let balancer = Balancer::new(BalancerKind::RoundRobin, &[5, 1, 1], None);
        let headers = HeaderMap::new();
        let picks: Vec<usize> = (0..7).map(|_| balancer.pick(&servers, &context(&headers), &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let even = Balancer::new(BalancerKind::RoundRobin, &[1, 1, 1], None);
        let servers = self::servers(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|_| even.pick(&servers, &context(&headers), &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn tried_servers_are_skipped() {
        let servers = servers(&[1, 1, 1]);
        let headers = HeaderMap::new();
        for kind in [BalancerKind::RoundRobin, BalancerKind::LeastConnections, BalancerKind::PowerOfTwoChoices] {
            let balancer = Balancer::new(kind, &[1, 1, 1], None);
            for _ in 0..20 {
                let pick = balancer.pick(&servers, &context(&headers), &[0, 2]).unwrap();
                assert_eq!(pick, 1);
            }
            assert_eq!(balancer.pick(&servers, &context(&headers), &[0, 1, 2]), None);
        }
    }

    #[test]
    fn least_connections_prefers_the_idle_server_for_its_weight() {
        let servers = servers(&[1, 2]);
        for _ in 0..3 {
            servers[0].start_request();
        }
        for _ in 0..4 {
            servers[1].start_request();
        }
        // (3+1)/1 = 4 against (4+1)/2 = 2.5.
        let balancer = Balancer::new(BalancerKind::LeastConnections, &[1, 2], None);
        let headers = HeaderMap::new();
        assert_eq!(balancer.pick(&servers, &context(&headers), &[]), Some(1));
    }

    #[test]
    fn two_choices_prefer_the_faster_server() {
        let servers = servers(&[1, 1]);
        servers[0].record_latency(Duration::from_millis(50));
        servers[1].record_latency(Duration::from_millis(1));
        let balancer = Balancer::new(BalancerKind::PowerOfTwoChoices, &[1, 1], None);
        let headers = HeaderMap::new();
        for _ in 0..20 {
            assert_eq!(balancer.pick(&servers, &context(&headers), &[]), Some(1));
        }
    }

    #[test]
    fn hashing_keeps_keys_and_moves_only_about_one_nth_when_a_server_leaves() {
        let weights = [1u32; 5];
        let full = Maglev::new(&weights);
        let keys: Vec<u64> = (0..10_000u64)
            .map(|key| {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                hasher.finish()
            })
            .collect();
        let before: Vec<usize> = keys.iter().map(|&key| full.lookup(key, |_| true).unwrap()).collect();
        // Each server owns about a fifth.
        for server in 0..5 {
            let owned = before.iter().filter(|&&owner| owner == server).count();
            assert!((1800..=2200).contains(&owned), "server {server} owns {owned} of 10000");
        }
        // Server 3 goes down: only its keys move.
        let without = keys.iter().map(|&key| full.lookup(key, |server| server != 3).unwrap());
        let moved = before.iter().zip(without).filter(|(a, b)| *a != b).count();
        let owned_by_3 = before.iter().filter(|&&owner| owner == 3).count();
        assert_eq!(moved, owned_by_3);
        // Server 3 leaves the configuration: a table rebuilt over four servers moves little more.
        let rebuilt = Maglev::new(&weights[..4]);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|&(&key, &owner)| {
                let now = rebuilt.lookup(key, |_| true).unwrap();
                // Servers 0..3 keep their indices; server 4's keys must move anyway.
                owner != 4 && now != owner
            })
            .count();
        let owned_by_4 = before.iter().filter(|&&owner| owner == 4).count();
        assert!(moved + owned_by_4 < 10_000 * 3 / 10, "{moved} kept-server keys moved besides {owned_by_4}");
    }

    #[test]
    fn hash_keys_come_from_header_cookie_or_address() {
        let servers = servers(&[1, 1, 1, 1]);
        let balancer = Balancer::new(BalancerKind::Hash(HashKey::Cookie("session".into())), &[1; 4], None);
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "theme=dark; session=abc123".parse().unwrap());
        let first = balancer.pick(&servers, &context(&headers), &[]);
        for _ in 0..10 {
            assert_eq!(balancer.pick(&servers, &context(&headers), &[]), first);
        }
        assert_eq!(cookie(&headers, "session"), Some("abc123"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
