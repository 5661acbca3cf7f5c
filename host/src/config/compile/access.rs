//! `access` (listeners and routes), `countries` (routes) and `[geoip]`: the static access rules
//! and the databases country rules read.

use super::*;
use crate::config::file::{AddressListsSection, CountriesSection, GeoIpSection};
use sluice_access::{AccessRules, AddressRules, CountryCode, CountryRules, GeoIp, IpRangeSet, parse_network};

impl Compiler<'_> {
    /// `[geoip]`: the databases read, in order (country first). Each is read whole.
    pub(super) fn geoip(&self, written: &Spanned<GeoIpSection>) -> Result<GeoIp, ConfigError> {
        let section = written.get_ref();
        let named = [("country_database", &section.country_database), ("asn_database", &section.asn_database)];
        let mut opened = Vec::new();
        for (field, path) in named {
            let Some(path) = path else { continue };
            let full = self.base_dir.join(path.get_ref());
            // Each file read once, on its own, so that an error names the key that gave it.
            let database = GeoIp::open([full.as_path()])
                .map_err(|err| self.spanned_error(path, &format!("geoip.{field}"), err.to_string()))?;
            self.watched_files.borrow_mut().push(full);
            opened.push(database);
        }
        if opened.is_empty() {
            return Err(self.spanned_error(written, "geoip", "name `country_database`, `asn_database` or both"));
        }
        Ok(GeoIp::join(opened))
    }

    /// A listener's or route's `access` lists, with the files they name (for the watcher).
    pub(super) fn address_rules(
        &self,
        key: &str,
        written: &Spanned<AddressListsSection>,
    ) -> Result<AddressRules, ConfigError> {
        let section = written.get_ref();
        let key = format!("{key}.access");
        let mut allow = match &section.allow {
            Some(entries) => Some(self.networks(&format!("{key}.allow"), entries)?),
            None => None,
        };
        let mut deny = self.networks(&format!("{key}.deny"), &section.deny)?;
        if let Some(file) = &section.allow_file {
            let read = self.network_file(&format!("{key}.allow_file"), file)?;
            allow.get_or_insert_with(Vec::new).extend(read);
        }
        if let Some(file) = &section.deny_file {
            deny.extend(self.network_file(&format!("{key}.deny_file"), file)?);
        }
        Ok(AddressRules { allow: allow.map(IpRangeSet::new), deny: IpRangeSet::new(deny) })
    }

    fn networks(&self, key: &str, entries: &[Spanned<String>]) -> Result<Vec<IpNet>, ConfigError> {
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                parse_network(entry.get_ref()).ok_or_else(|| {
                    self.spanned_error(entry, &format!("{key}[{index}]"), not_a_network(entry.get_ref()))
                })
            })
            .collect()
    }

    /// A list file: one address or range per line; blank lines and `#` comments are skipped.
    fn network_file(&self, key: &str, written: &Spanned<String>) -> Result<Vec<IpNet>, ConfigError> {
        let path = self.base_dir.join(written.get_ref());
        let text = std::fs::read_to_string(&path)
            .map_err(|err| self.spanned_error(written, key, format!("cannot read {}: {err}", path.display())))?;
        let mut networks = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let network = parse_network(entry).ok_or_else(|| {
                self.spanned_error(
                    written,
                    key,
                    format!("{} line {}: {}", path.display(), number + 1, not_a_network(entry)),
                )
            })?;
            networks.push(network);
        }
        self.watched_files.borrow_mut().push(path);
        Ok(networks)
    }

    /// A route's `countries`; `geoip` says whether a database is configured to read them from.
    pub(super) fn country_rules(
        &self,
        key: &str,
        written: &Spanned<CountriesSection>,
        geoip: bool,
    ) -> Result<CountryRules, ConfigError> {
        let key = format!("{key}.countries");
        if !geoip {
            return Err(self.spanned_error(written, &key, "needs a [geoip] section with a `country_database`"));
        }
        let section = written.get_ref();
        let codes = |field: &str, entries: &[Spanned<String>]| {
            entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    CountryCode::parse(entry.get_ref()).ok_or_else(|| {
                        self.spanned_error(
                            entry,
                            &format!("{key}.{field}[{index}]"),
                            format!("{:?} is not a two-letter country code (ISO 3166-1 alpha-2)", entry.get_ref()),
                        )
                    })
                })
                .collect::<Result<std::collections::BTreeSet<_>, _>>()
        };
        let allow = match &section.allow {
            Some(entries) => Some(codes("allow", entries)?),
            None => None,
        };
        let deny = codes("deny", &section.deny)?;
        if allow.is_none() && deny.is_empty() {
            return Err(self.spanned_error(written, &key, "give `allow`, `deny` or both"));
        }
        Ok(CountryRules { allow, deny })
    }

    /// A listener's or route's whole rule set.
    pub(super) fn access_rules(
        &self,
        key: &str,
        addresses: Option<&Spanned<AddressListsSection>>,
        countries: Option<&Spanned<CountriesSection>>,
        geoip: bool,
    ) -> Result<Arc<AccessRules>, ConfigError> {
        let addresses = match addresses {
            Some(written) => self.address_rules(key, written)?,
            None => AddressRules::default(),
        };
        let countries = match countries {
            Some(written) => self.country_rules(key, written, geoip)?,
            None => CountryRules::default(),
        };
        Ok(Arc::new(AccessRules { addresses, countries }))
    }
}

fn not_a_network(text: &str) -> String {
    format!("{text:?} is not an address or a CIDR range (such as 192.0.2.1 or 10.0.0.0/8)")
}
