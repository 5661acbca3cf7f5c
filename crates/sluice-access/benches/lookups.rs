//! Access-control lookups: an address against deny lists of 10, 1,000 and 100,000 ranges (hits
//! and misses, IPv4 and IPv6), and the block list's check with and without bans held. The claim
//! under test: a lookup costs about the same whatever the list's size (sorted, merged ranges,
//! binary search), so a 100,000-range list adds nothing a request would notice.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng};
use sluice_access::{BanOrigin, BanRequest, BanScope, BlockList, IpRangeSet};

/// `count` random ranges, three IPv4 (/16 to /32) to one IPv6 (/32 to /64), and addresses to
/// look up: some inside a range, some outside every one.
fn ranges(count: usize) -> (IpRangeSet, Vec<IpAddr>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let networks: Vec<IpNet> = (0..count)
        .map(|index| {
            if index % 4 == 3 {
                let address = Ipv6Addr::from(rng.random::<u128>() | (0x2000u128 << 112));
                IpNet::V6(Ipv6Net::new(address, rng.random_range(32..=64)).unwrap().trunc())
            } else {
                let address = Ipv4Addr::from(rng.random::<u32>());
                IpNet::V4(Ipv4Net::new(address, rng.random_range(16..=32)).unwrap().trunc())
            }
        })
        .collect();
    let mut probes: Vec<IpAddr> = networks.iter().step_by(97).take(32).map(|network| network.addr()).collect();
    probes.extend((0..32).map(|_| IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))));
    probes.extend((0..16).map(|_| IpAddr::V6(Ipv6Addr::from(rng.random::<u128>()))));
    (IpRangeSet::new(networks), probes)
}

fn deny_list_lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("deny_list_lookup");
    for count in [10, 1_000, 100_000] {
        let (set, probes) = ranges(count);
        group.bench_with_input(BenchmarkId::from_parameter(count), &(set, probes), |b, (set, probes)| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % probes.len();
                black_box(set.contains(black_box(probes[next])))
            });
        });
    }
    group.finish();
}

fn block_list_checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_list_check");
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let empty = BlockList::default();
    group.bench_function("no bans", |b| b.iter(|| black_box(empty.banned(black_box(client), Some("shop")))));
    let held = BlockList::default();
    for index in 0..10_000u32 {
        let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + index));
        let request = BanRequest {
            network: IpNet::from(address),
            scope: BanScope::Tenant("shop".into()),
            duration: Duration::from_secs(3600),
            reason: "bench".into(),
            origin: BanOrigin::Admin,
            tenant_limit: usize::MAX,
        };
        held.ban(request).unwrap();
    }
    group.bench_function("10,000 bans, not banned", |b| {
        b.iter(|| black_box(held.banned(black_box(client), Some("shop"))))
    });
    let banned = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 42));
    group.bench_function("10,000 bans, banned", |b| b.iter(|| black_box(held.banned(black_box(banned), Some("shop")))));
    group.finish();
}

criterion_group!(benches, deny_list_lookups, block_list_checks);
criterion_main!(benches);
