//! Sets of addresses and CIDR ranges that answer "is this address in the set?" in a binary
//! search over sorted, merged ranges: 100,000 ranges take 17 comparisons, whatever they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An address (`192.0.2.1`, `2001:db8::1`) or a CIDR range (`10.0.0.0/8`), as configs, list
/// files and the admin API write them.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// An immutable set of IPv4 and IPv6 ranges.
///
/// Built once (at config compile), then read by every request without locks. Overlapping and
/// adjacent ranges are merged, so a lookup is one `partition_point` per family. An IPv4-mapped
/// IPv6 address (`::ffff:192.0.2.1`) is looked up as the IPv4 address it carries: a dual-stack
/// socket reports IPv4 clients that way, and `192.0.2.0/24` must match them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRangeSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpRangeSet {
    /// The set of `networks`; host bits below a prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn new<I: IntoIterator<Item = IpNet>>(networks: I) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks {
            match network {
                IpNet::V4(net) => v4.push((u32::from(net.network()), u32::from(net.broadcast()))),
                IpNet::V6(net) => {
                    let (first, last) = (u128::from(net.network()), u128::from(net.broadcast()));
                    match (mapped_v4(first), mapped_v4(last)) {
                        (Some(first), Some(last)) => v4.push((first, last)),
                        _ => v6.push((first, last)),
                    }
                }
            }
        }
        Self { v4: merged(v4), v6: merged(v6) }
    }

    /// Whether `address` is in one of the ranges.
    pub fn contains(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(address) => in_ranges(&self.v4, u32::from(address)),
            IpAddr::V6(address) => match mapped_v4(u128::from(address)) {
                Some(v4) => in_ranges(&self.v4, v4),
                None => in_ranges(&self.v6, u128::from(address)),
            },
        }
    }

    /// Whether the set holds no range at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// How many disjoint ranges it holds after merging.
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

impl FromIterator<IpNet> for IpRangeSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(networks: I) -> Self {
        Self::new(networks)
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
fn mapped_v4(address: u128) -> Option<u32> {
    Ipv6Addr::from(address).to_ipv4_mapped().map(|v4: Ipv4Addr| u32::from(v4))
}

/// Sorts `ranges` and merges those that overlap or touch.
fn merged<T: Copy + Ord + Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some((_, end)) if end.successor().is_none_or(|next| first <= next) => *end = (*end).max(last),
            _ => out.push((first, last)),
        }
    }
    out.shrink_to_fit();
    out
}

fn in_ranges<T: Copy + Ord>(ranges: &[(T, T)], address: T) -> bool {
    // The first range starting after the address; the one before it is the only candidate.
    let after = ranges.partition_point(|(first, _)| *first <= address);
    after > 0 && address <= ranges[after - 1].1
}

/// The next integer, if any: ranges that end right before another starts are merged.
trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(networks: &[&str]) -> IpRangeSet {
        networks.iter().map(|net| net.parse::<IpNet>().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_and_ranges_parse() {
        assert_eq!(parse_network("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_network(" 2001:db8::/32 ").unwrap().to_string(), "2001:db8::/32");
        assert!(parse_network("10.0.0.0/33").is_none());
        assert!(parse_network("example.com").is_none());
    }

    #[test]
    fn addresses_inside_and_outside_ranges() {
        let ranges = set(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(ranges.contains(ip("10.255.255.255")));
        assert!(ranges.contains(ip("10.0.0.0")));
        assert!(!ranges.contains(ip("11.0.0.0")));
        assert!(!ranges.contains(ip("9.255.255.255")));
        assert!(ranges.contains(ip("192.0.2.7")));
        assert!(!ranges.contains(ip("192.0.2.8")));
        assert!(ranges.contains(ip("2001:db8:ffff::1")));
        assert!(!ranges.contains(ip("2001:db9::1")));
        assert!(!set(&[]).contains(ip("10.0.0.1")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_ranges_both_ways() {
        let v4 = set(&["192.0.2.0/24"]);
        assert!(v4.contains(ip("::ffff:192.0.2.9")));
        let written_as_v6 = set(&["::ffff:198.51.100.0/120"]);
        assert!(written_as_v6.contains(ip("198.51.100.200")));
        assert!(!written_as_v6.contains(ip("198.51.101.1")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let ranges = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24", "0.0.0.0/0"]);
        assert_eq!(ranges.range_count(), 1);
        assert!(ranges.contains(ip("255.255.255.255")));
        let ranges = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.3.0/24"]);
        assert_eq!(ranges.range_count(), 2);
        assert!(!ranges.contains(ip("10.0.2.1")));
        let all_v6 = set(&["::/0", "2001:db8::/32"]);
        assert!(all_v6.contains(ip("ffff::1")));
    }

    #[test]
    fn host_bits_below_the_prefix_are_ignored() {
        let ranges = set(&["10.1.2.3/8"]);
        assert!(ranges.contains(ip("10.200.0.1")));
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        use rand::Rng;
        let mut rng = rand::rng();
        let networks: Vec<IpNet> = (0..500)
            .map(|_| {
                let address = Ipv4Addr::from(rng.random::<u32>() & 0xff_ff_ff_00);
                IpNet::new(IpAddr::V4(address), rng.random_range(8..=32)).unwrap().trunc()
            })
            .collect();
        let ranges = IpRangeSet::new(networks.clone());
        for _ in 0..20_000 {
            let address = IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()));
            assert_eq!(ranges.contains(address), networks.iter().any(|net| net.contains(&address)), "{address}");
        }
    }
}
