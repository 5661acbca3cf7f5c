//! Dynamic block lists: clients banned for a while, by an operator through the admin API or by
//! a filter whose tenant has the grant (the WAF after repeated attacks, the rate limiter after
//! repeated overruns).
//!
//! The list lives as long as the process, across reloads. A ban set by a filter applies to its
//! own tenant's routes only: one tenant's code can never lock a client out of another's. A ban
//! set by an operator applies everywhere unless it names a tenant. Bans end by themselves;
//! expired ones are never matched and are swept when the list is written. The list is bounded
//! (in all, and per tenant): past the bound a new ban is refused, never an old one dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

/// Bans an operator may hold at once unless configured otherwise.
pub const DEFAULT_MAX_BANS: usize = 100_000;
/// Range bans (wider than one address) at once: each is checked against every request, in
/// turn, so they stay few; use a `deny` list for large sets of ranges.
pub const MAX_RANGE_BANS: usize = 1_000;
/// The longest ban, from anyone.
pub const MAX_BAN_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Whose routes a ban closes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanScope {
    /// Every route.
    All,
    /// The routes of this tenant.
    Tenant(Arc<str>),
}

/// Who set a ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanOrigin {
    /// The admin API.
    Admin,
    /// A filter, through the `client` host interface.
    Filter {
        /// The route it ran on.
        route: Arc<str>,
        /// The filter (its plugin's name).
        filter: Arc<str>,
    },
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The address or range banned.
    pub network: IpNet,
    /// Whose routes it closes.
    pub scope: BanScope,
    /// Why, as given.
    pub reason: String,
    /// Who set it.
    pub origin: BanOrigin,
    /// When it ends, for the clock that decides.
    pub until: Instant,
    /// When it ends, for people (`GET /blocks`).
    pub until_wall: SystemTime,
}

impl Ban {
    fn active(&self, now: Instant) -> bool {
        self.until > now
    }

    fn closes(&self, tenant: Option<&str>) -> bool {
        match &self.scope {
            BanScope::All => true,
            BanScope::Tenant(name) => tenant == Some(&**name),
        }
    }
}

/// Why a ban was not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    /// The list, or the tenant's share of it, is full.
    #[error("the block list holds its limit of {limit} bans")]
    Full {
        /// The limit that was reached.
        limit: usize,
    },
    /// A ban must last some time.
    #[error("a ban must last at least a millisecond")]
    NoDuration,
}

#[derive(Debug, Default)]
struct Entries {
    /// Bans of one address, by address: looked up in one step.
    hosts: HashMap<IpAddr, Vec<Ban>>,
    /// Bans of wider ranges, checked in turn.
    ranges: Vec<Ban>,
    /// Bans held per tenant scope.
    per_tenant: HashMap<Arc<str>, usize>,
    count: usize,
}

impl Entries {
    fn sweep(&mut self, now: Instant) {
        let per_tenant = &mut self.per_tenant;
        let mut removed = 0;
        let mut forget = |ban: &Ban| {
            if let BanScope::Tenant(name) = &ban.scope
                && let Some(held) = per_tenant.get_mut(name)
            {
                *held = held.saturating_sub(1);
            }
            removed += 1;
        };
        self.hosts.retain(|_, bans| {
            bans.retain(|ban| {
                ban.active(now) || {
                    forget(ban);
                    false
                }
            });
            !bans.is_empty()
        });
        self.ranges.retain(|ban| {
            ban.active(now) || {
                forget(ban);
                false
            }
        });
        self.per_tenant.retain(|_, held| *held > 0);
        self.count -= removed;
    }

    fn existing(&mut self, network: &IpNet, scope: &BanScope) -> Option<&mut Ban> {
        let bans = if is_single_address(network) {
            self.hosts.get_mut(&network.addr())?.as_mut_slice()
        } else {
            self.ranges.as_mut_slice()
        };
        bans.iter_mut().find(|ban| ban.network == *network && ban.scope == *scope)
    }
}

/// `network` without host bits, and as IPv4 when it is written as IPv4-mapped IPv6: requests
/// are matched as IPv4 then.
fn canonical(network: IpNet) -> IpNet {
    let network = network.trunc();
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(network, IpNet::V4),
            None => network,
        },
        _ => network,
    }
}

fn is_single_address(network: &IpNet) -> bool {
    network.prefix_len() == network.max_prefix_len()
}

/// What happened to the list, for whoever shares it with other instances.
#[derive(Debug, Clone)]
pub enum BlockChange {
    /// A ban was set or extended here.
    Banned(Ban),
    /// Bans on `network` (in `scope`, or every scope) were lifted here.
    Lifted {
        /// The address or range.
        network: IpNet,
        /// The scope, or every one.
        scope: Option<BanScope>,
    },
}

/// Told of every change made on this instance (not of changes applied from elsewhere).
pub type BlockObserver = Box<dyn Fn(&BlockChange) + Send + Sync>;

/// The block list. Requests read it (a shared lock, skipped entirely while it is empty); bans
/// write it.
pub struct BlockList {
    entries: RwLock<Entries>,
    /// Bans held, expired ones not yet swept included: zero means no request looks.
    held: AtomicUsize,
    max_bans: usize,
    observer: RwLock<Option<BlockObserver>>,
}

impl std::fmt::Debug for BlockList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockList").field("held", &self.held).field("max_bans", &self.max_bans).finish_non_exhaustive()
    }
}

impl Default for BlockList {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BANS)
    }
}

/// What [`BlockList::ban`] is asked to do.
#[derive(Debug, Clone)]
pub struct BanRequest {
    /// The address or range.
    pub network: IpNet,
    /// Whose routes it closes.
    pub scope: BanScope,
    /// How long (capped at [`MAX_BAN_DURATION`]).
    pub duration: Duration,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub origin: BanOrigin,
    /// Most bans of a tenant scope at once (ignored for [`BanScope::All`]).
    pub tenant_limit: usize,
}

impl BlockList {
    /// An empty list holding at most `max_bans`.
    pub fn new(max_bans: usize) -> Self {
        Self { entries: RwLock::default(), held: AtomicUsize::new(0), max_bans, observer: RwLock::new(None) }
    }

    /// Tells `observer` of every later ban and lift made on this instance.
    pub fn observe(&self, observer: BlockObserver) {
        *self.observer.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(observer);
    }

    fn tell(&self, change: &BlockChange) {
        if let Some(observer) = &*self.observer.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            observer(change);
        }
    }

    /// Sets a ban, or extends one on the same network and scope (the later end wins, the new
    /// reason replaces the old). Returns the ban as held.
    pub fn ban(&self, request: BanRequest) -> Result<Ban, BanError> {
        let ban = self.apply(request)?;
        self.tell(&BlockChange::Banned(ban.clone()));
        Ok(ban)
    }

    /// [`BlockList::ban`] for a ban another instance set: held the same, told to no observer.
    pub fn apply(&self, request: BanRequest) -> Result<Ban, BanError> {
        if request.duration < Duration::from_millis(1) {
            return Err(BanError::NoDuration);
        }
        let duration = request.duration.min(MAX_BAN_DURATION);
        let now = Instant::now();
        let network = canonical(request.network);
        let ban = Ban {
            network,
            scope: request.scope,
            reason: request.reason,
            origin: request.origin,
            until: now + duration,
            until_wall: SystemTime::now() + duration,
        };
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = entries.existing(&ban.network, &ban.scope) {
            if ban.until > held.until {
                held.until = ban.until;
                held.until_wall = ban.until_wall;
            }
            held.reason = ban.reason;
            held.origin = ban.origin;
            return Ok(held.clone());
        }
        let tenant_full = |entries: &Entries| match &ban.scope {
            BanScope::Tenant(name) => entries.per_tenant.get(name).copied().unwrap_or(0) >= request.tenant_limit,
            BanScope::All => false,
        };
        let ranges_full =
            |entries: &Entries| !is_single_address(&ban.network) && entries.ranges.len() >= MAX_RANGE_BANS;
        if entries.count >= self.max_bans || tenant_full(&entries) || ranges_full(&entries) {
            entries.sweep(now);
        }
        if entries.count >= self.max_bans {
            return Err(BanError::Full { limit: self.max_bans });
        }
        if tenant_full(&entries) {
            return Err(BanError::Full { limit: request.tenant_limit });
        }
        if ranges_full(&entries) {
            return Err(BanError::Full { limit: MAX_RANGE_BANS });
        }
        if let BanScope::Tenant(name) = &ban.scope {
            *entries.per_tenant.entry(name.clone()).or_default() += 1;
        }
        if is_single_address(&ban.network) {
            entries.hosts.entry(ban.network.addr()).or_default().push(ban.clone());
        } else {
            entries.ranges.push(ban.clone());
        }
        entries.count += 1;
        self.held.store(entries.count, Ordering::Release);
        Ok(ban)
    }

    /// Lifts the bans on exactly `network` (in `scope`, or in every scope when `None`). Returns
    /// how many were lifted.
    pub fn lift(&self, network: IpNet, scope: Option<&BanScope>) -> usize {
        let lifted = self.apply_lift(network, scope);
        self.tell(&BlockChange::Lifted { network: canonical(network), scope: scope.cloned() });
        lifted
    }

    /// [`BlockList::lift`] for a lift made on another instance.
    pub fn apply_lift(&self, network: IpNet, scope: Option<&BanScope>) -> usize {
        let network = canonical(network);
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let matches = |ban: &Ban| ban.network == network && scope.is_none_or(|scope| ban.scope == *scope);
        // Expire the matching bans, then let the sweep do the bookkeeping.
        let mut lifted = 0;
        let bans: Vec<&mut Ban> = if is_single_address(&network) {
            entries.hosts.get_mut(&network.addr()).map(|bans| bans.iter_mut().collect()).unwrap_or_default()
        } else {
            entries.ranges.iter_mut().collect()
        };
        for ban in bans {
            if matches(ban) && ban.active(now) {
                ban.until = now;
                lifted += 1;
            }
        }
        entries.sweep(now);
        self.held.store(entries.count, Ordering::Release);
        lifted
    }

    /// The ban that closes `tenant`'s routes (or, with `None`, every route) to `client`, if
    /// one does.
    pub fn banned(&self, client: IpAddr, tenant: Option<&str>) -> Option<Ban> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            IpAddr::V4(_) => client,
        };
        let now = Instant::now();
        let entries = self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let applies = |ban: &&Ban| ban.active(now) && ban.closes(tenant);
        if let Some(ban) = entries.hosts.get(&client).and_then(|bans| bans.iter().find(applies)) {
            return Some(ban.clone());
        }
        entries.ranges.iter().filter(|ban| ban.network.contains(&client)).find(applies).cloned()
    }

    /// Every ban in force, soonest to end first.
    pub fn active(&self) -> Vec<Ban> {
        let now = Instant::now();
        let entries = self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut bans: Vec<Ban> =
            entries.hosts.values().flatten().chain(&entries.ranges).filter(|ban| ban.active(now)).cloned().collect();
        bans.sort_by_key(|ban| ban.until);
        bans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(network: &str, scope: BanScope, millis: u64) -> BanRequest {
        BanRequest {
            network: network.parse().unwrap(),
            scope,
            duration: Duration::from_millis(millis),
            reason: "test".into(),
            origin: BanOrigin::Admin,
            tenant_limit: 2,
        }
    }

    fn tenant(name: &str) -> BanScope {
        BanScope::Tenant(name.into())
    }

    #[test]
    fn a_tenant_ban_closes_only_that_tenants_routes() {
        let list = BlockList::default();
        list.ban(request("192.0.2.1/32", tenant("shop"), 60_000)).unwrap();
        let client = "192.0.2.1".parse().unwrap();
        assert!(list.banned(client, Some("shop")).is_some());
        assert!(list.banned(client, Some("blog")).is_none());
        assert!(list.banned(client, None).is_none());
        assert!(list.banned("192.0.2.2".parse().unwrap(), Some("shop")).is_none());
    }

    #[test]
    fn an_operator_ban_closes_every_route_and_ranges_match() {
        let list = BlockList::default();
        list.ban(request("2001:db8::/48", BanScope::All, 60_000)).unwrap();
        assert!(list.banned("2001:db8::7".parse().unwrap(), Some("shop")).is_some());
        assert!(list.banned("2001:db8::7".parse().unwrap(), None).is_some());
        assert!(list.banned("2001:db9::7".parse().unwrap(), None).is_none());
    }

    #[test]
    fn expired_bans_do_not_match_and_are_swept() {
        let list = BlockList::default();
        let ban = list.ban(request("192.0.2.1/32", BanScope::All, 1)).unwrap();
        let client = "192.0.2.1".parse().unwrap();
        // Checked against the ban's own end rather than by sleeping.
        while Instant::now() <= ban.until {
            std::hint::spin_loop();
        }
        assert!(list.banned(client, None).is_none());
        assert!(list.active().is_empty());
        assert_eq!(list.lift("192.0.2.1/32".parse().unwrap(), None), 0);
        assert_eq!(list.held.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_same_ban_again_extends_it() {
        let list = BlockList::default();
        let first = list.ban(request("192.0.2.1/32", BanScope::All, 1_000)).unwrap();
        let second = list.ban(request("192.0.2.1/32", BanScope::All, 60_000)).unwrap();
        assert!(second.until > first.until);
        assert_eq!(list.active().len(), 1);
    }

    #[test]
    fn a_tenants_share_is_bounded_and_others_are_not_touched() {
        let list = BlockList::default();
        list.ban(request("192.0.2.1/32", tenant("shop"), 60_000)).unwrap();
        list.ban(request("192.0.2.2/32", tenant("shop"), 60_000)).unwrap();
        assert_eq!(list.ban(request("192.0.2.3/32", tenant("shop"), 60_000)), Err(BanError::Full { limit: 2 }));
        list.ban(request("192.0.2.3/32", tenant("blog"), 60_000)).unwrap();
        list.ban(request("192.0.2.3/32", BanScope::All, 60_000)).unwrap();
        let whole = BlockList::new(1);
        whole.ban(request("192.0.2.1/32", BanScope::All, 60_000)).unwrap();
        assert_eq!(whole.ban(request("192.0.2.2/32", BanScope::All, 60_000)), Err(BanError::Full { limit: 1 }));
    }

    #[test]
    fn lifting_removes_the_ban() {
        let list = BlockList::default();
        list.ban(request("192.0.2.1/32", tenant("shop"), 60_000)).unwrap();
        list.ban(request("192.0.2.1/32", BanScope::All, 60_000)).unwrap();
        assert_eq!(list.lift("192.0.2.1/32".parse().unwrap(), Some(&BanScope::All)), 1);
        let client = "192.0.2.1".parse().unwrap();
        assert!(list.banned(client, None).is_none());
        assert!(list.banned(client, Some("shop")).is_some());
        assert_eq!(list.lift("192.0.2.1/32".parse().unwrap(), None), 1);
        assert!(list.banned(client, Some("shop")).is_none());
    }

    #[test]
    fn mapped_ipv4_clients_meet_their_ipv4_bans() {
        let list = BlockList::default();
        list.ban(request("192.0.2.1/32", BanScope::All, 60_000)).unwrap();
        assert!(list.banned("::ffff:192.0.2.1".parse().unwrap(), None).is_some());
    }
}
