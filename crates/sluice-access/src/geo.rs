//! Where a client address is: its country and autonomous system, read from MaxMind-format
//! databases (`.mmdb`: GeoIP2/GeoLite2 Country or City, ASN, or any database with the same
//! fields) with the `maxminddb` crate.
//!
//! A database is read into memory whole when the configuration is compiled; a new file is
//! picked up by the reload that its change triggers, and a file that does not read leaves the
//! running configuration (and its database) serving.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// Where a client is, as far as the databases know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code, upper case (`DE`).
    pub country: Option<CountryCode>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// The autonomous system's organisation.
    pub as_organization: Option<Arc<str>>,
}

impl Location {
    /// Whether nothing is known.
    pub fn is_unknown(&self) -> bool {
        self.country.is_none() && self.asn.is_none()
    }
}

/// A two-letter country code, held without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// `code` in upper case, when it is two ASCII letters.
    pub fn parse(code: &str) -> Option<Self> {
        match code.as_bytes() {
            [first, second] if first.is_ascii_alphabetic() && second.is_ascii_alphabetic() => {
                Some(Self([first.to_ascii_uppercase(), second.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code, such as `DE`.
    pub fn as_str(&self) -> &str {
        // Two ASCII letters, checked in `parse`.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for CountryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the GeoIP database {path}: {source}")]
pub struct GeoError {
    /// The file.
    pub path: PathBuf,
    /// What the reader said.
    #[source]
    pub source: maxminddb::MaxMindDbError,
}

/// The fields Sluice reads from a record, whatever the database type: `country.iso_code`
/// (Country, City), `registered_country.iso_code` when the first is missing, and the ASN
/// database's two fields.
#[derive(Debug, Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<CountryField<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<CountryField<'a>>,
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct CountryField<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

struct Database {
    path: PathBuf,
    reader: maxminddb::Reader<Vec<u8>>,
}

impl Database {
    fn open(path: &Path) -> Result<Self, GeoError> {
        let reader =
            maxminddb::Reader::open_readfile(path).map_err(|source| GeoError { path: path.to_owned(), source })?;
        Ok(Self { path: path.to_owned(), reader })
    }

    /// Fills in what this database knows of `address` and `location` does not yet.
    fn complete(&self, address: IpAddr, location: &mut Location) {
        let Ok(found) = self.reader.lookup(address) else { return };
        // A record that does not decode is treated as absent: the database is the operator's,
        // and one odd record must not fail the request.
        let Ok(Some(record)) = found.decode::<Record<'_>>() else { return };
        if location.country.is_none() {
            location.country = [record.country, record.registered_country]
                .into_iter()
                .flatten()
                .find_map(|country| country.iso_code.and_then(CountryCode::parse));
        }
        if location.asn.is_none() {
            location.asn = record.autonomous_system_number;
            location.as_organization = record.autonomous_system_organization.map(Arc::from);
        }
    }
}

/// The configured databases: one for countries, one for autonomous systems (either may be
/// absent, or both the same file).
pub struct GeoIp {
    databases: Vec<Database>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").field("paths", &self.paths()).finish()
    }
}

impl GeoIp {
    /// Reads the databases at `paths`, in the order they are asked: the first that knows a
    /// field gives it.
    pub fn open<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Result<Self, GeoError> {
        let databases = paths.into_iter().map(Database::open).collect::<Result<_, _>>()?;
        Ok(Self { databases })
    }

    /// The databases of `parts`, asked in that order.
    pub fn join(parts: impl IntoIterator<Item = GeoIp>) -> Self {
        Self { databases: parts.into_iter().flat_map(|part| part.databases).collect() }
    }

    /// Where `address` is. Private, loopback and unlisted addresses are simply unknown.
    pub fn locate(&self, address: IpAddr) -> Location {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        let mut location = Location::default();
        for database in &self.databases {
            database.complete(address, &mut location);
        }
        location
    }

    /// The files read.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.databases.iter().map(|database| database.path.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_are_two_letters_in_upper_case() {
        assert_eq!(CountryCode::parse("de").map(|code| code.to_string()).as_deref(), Some("DE"));
        assert_eq!(CountryCode::parse("DEU"), None);
        assert_eq!(CountryCode::parse("1A"), None);
        assert_eq!(CountryCode::parse(""), None);
    }
}
