//! `[redis.NAME]`: a Redis that tenants' key-value state (and, with it, rate limits) can live in,
//! shared by every Sluice instance that names the same one.

use super::*;
use crate::config::file::RedisSection;
use sluice_runtime::kv::{RedisKv, RedisSettings};

impl Compiler<'_> {
    /// One `[redis.NAME]`; the running configuration's backend is kept (with its connections)
    /// while its settings stay the same.
    pub(super) fn redis(
        &self,
        name: &str,
        written: &Spanned<RedisSection>,
        previous: Option<&Snapshot>,
    ) -> Result<Arc<RedisKv>, ConfigError> {
        let key = format!("redis.{name}");
        let section = written.get_ref();
        let url = section.url.get_ref();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(self.spanned_error(
                &section.url,
                &format!("{key}.url"),
                "must start with redis:// or rediss://",
            ));
        }
        if section.timeout.0.is_zero() {
            return Err(self.spanned_error(written, &format!("{key}.timeout"), "must be more than zero"));
        }
        if section.connect_timeout.0.is_zero() {
            return Err(self.spanned_error(written, &format!("{key}.connect_timeout"), "must be more than zero"));
        }
        if !(1..=64).contains(&section.pool_size) {
            return Err(self.spanned_error(written, &format!("{key}.pool_size"), "must be 1 to 64"));
        }
        if section.key_prefix.is_empty() || section.key_prefix.contains(char::is_whitespace) {
            return Err(self.spanned_error(written, &format!("{key}.key_prefix"), "must be a word without spaces"));
        }
        let settings = RedisSettings {
            name: name.to_owned(),
            url: url.clone(),
            timeout: section.timeout.0,
            connect_timeout: section.connect_timeout.0,
            pool_size: section.pool_size,
            key_prefix: section.key_prefix.clone(),
        };
        if let Some(running) =
            previous.and_then(|previous| previous.redis.get(name)).filter(|running| *running.settings() == settings)
        {
            return Ok(running.clone());
        }
        RedisKv::new(settings)
            .map(Arc::new)
            .map_err(|message| self.spanned_error(&section.url, &format!("{key}.url"), message))
    }
}
