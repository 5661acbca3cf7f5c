//! The static rules of a listener or a route: address `allow` and `deny` lists, and country
//! lists read against the GeoIP database.
//!
//! The order is the same everywhere and documented for users: **deny wins**. A client in a deny
//! list is refused whatever the allow list says; with an allow list, a client outside it is
//! refused; a client is admitted only past both. Address lists are checked before country lists.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::geo::{CountryCode, Location};
use crate::ranges::IpRangeSet;

/// Which rule refused a client: the `list` label of the refusal metric and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// In the `deny` list.
    Denied,
    /// Outside a non-empty `allow` list.
    NotAllowed,
    /// From a denied country, or outside the allowed ones (an unknown country included).
    Country,
    /// Banned for a while, by the admin API or by a filter.
    Banned,
}

impl Refusal {
    /// The name used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "deny",
            Self::NotAllowed => "allow",
            Self::Country => "countries",
            Self::Banned => "blocks",
        }
    }
}

/// Address lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRules {
    /// Only these may pass (`None`: anyone not denied).
    pub allow: Option<IpRangeSet>,
    /// These never pass.
    pub deny: IpRangeSet,
}

impl AddressRules {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Why `client` is refused, if it is.
    pub fn refuses(&self, client: IpAddr) -> Option<Refusal> {
        if self.deny.contains(client) {
            return Some(Refusal::Denied);
        }
        match &self.allow {
            Some(allow) if !allow.contains(client) => Some(Refusal::NotAllowed),
            _ => None,
        }
    }
}

/// Country lists, as ISO 3166-1 alpha-2 codes in upper case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryRules {
    /// Only clients located in these may pass (`None`: any not denied). A client whose
    /// country is unknown is outside every allow list.
    pub allow: Option<BTreeSet<CountryCode>>,
    /// Clients located in these never pass.
    pub deny: BTreeSet<CountryCode>,
}

impl CountryRules {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Whether a client at `location` is refused.
    pub fn refuses(&self, location: &Location) -> bool {
        let country = location.country;
        if country.is_some_and(|country| self.deny.contains(&country)) {
            return true;
        }
        match &self.allow {
            Some(allow) => !country.is_some_and(|country| allow.contains(&country)),
            None => false,
        }
    }
}

/// The whole static rule set of one listener or route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Address lists.
    pub addresses: AddressRules,
    /// Country lists.
    pub countries: CountryRules,
}

impl AccessRules {
    /// Whether there is nothing to check: requests skip the phase.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.countries.is_empty()
    }

    /// Why a client at `client` in `location` is refused, if it is; address lists first.
    pub fn refuses(&self, client: IpAddr, location: &Location) -> Option<Refusal> {
        self.addresses.refuses(client).or_else(|| self.countries.refuses(location).then_some(Refusal::Country))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: Option<&[&str]>, deny: &[&str]) -> AddressRules {
        let set = |nets: &[&str]| nets.iter().map(|net| net.parse::<ipnet::IpNet>().unwrap()).collect();
        AddressRules { allow: allow.map(set), deny: set(deny) }
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = rules(Some(&["10.0.0.0/8"]), &["10.9.0.0/16"]);
        assert_eq!(rules.refuses("10.1.0.1".parse().unwrap()), None);
        assert_eq!(rules.refuses("10.9.0.1".parse().unwrap()), Some(Refusal::Denied));
        assert_eq!(rules.refuses("192.0.2.1".parse().unwrap()), Some(Refusal::NotAllowed));
    }

    #[test]
    fn without_an_allow_list_only_the_denied_are_refused() {
        let rules = rules(None, &["2001:db8::/32"]);
        assert_eq!(rules.refuses("2001:db8::1".parse().unwrap()), Some(Refusal::Denied));
        assert_eq!(rules.refuses("2001:db9::1".parse().unwrap()), None);
    }

    #[test]
    fn unknown_countries_are_outside_allow_lists_and_inside_no_deny_list() {
        let unknown = Location::default();
        let de = CountryCode::parse("DE").unwrap();
        let german = Location { country: Some(de), ..Location::default() };
        let allow = CountryRules { allow: Some([de].into()), deny: BTreeSet::new() };
        assert!(!allow.refuses(&german));
        assert!(allow.refuses(&unknown));
        let deny = CountryRules { allow: None, deny: [de].into() };
        assert!(deny.refuses(&german));
        assert!(!deny.refuses(&unknown));
    }
}
