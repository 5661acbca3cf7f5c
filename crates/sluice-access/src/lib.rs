//! Access control at the edge, before any filter runs: address allow and deny lists
//! ([`IpRangeSet`], [`AddressRules`]), country lists read against MaxMind-format databases
//! ([`GeoIp`], [`CountryRules`]), and clients banned for a while ([`BlockList`]).
//!
//! A leaf crate: it knows addresses, databases and bans, not requests or routes. The proxy
//! decides which client address a request has and what a refusal looks like.

#![forbid(unsafe_code)]

mod blocks;
mod geo;
mod ranges;
mod rules;

pub use blocks::{
    Ban, BanError, BanOrigin, BanRequest, BanScope, BlockChange, BlockList, BlockObserver, DEFAULT_MAX_BANS,
    MAX_BAN_DURATION, MAX_RANGE_BANS,
};
pub use geo::{CountryCode, GeoError, GeoIp, Location};
pub use ranges::{IpRangeSet, parse_network};
pub use rules::{AccessRules, AddressRules, CountryRules, Refusal};
