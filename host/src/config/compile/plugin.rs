//! `[plugin.NAME]`: a resolved component compiled and checked, or the running one when its bytes did not change.

use super::*;

impl Compiler<'_> {
    pub(super) fn plugin(
        &self,
        name: &str,
        written: &Spanned<PluginSection>,
        component: &ResolvedPlugin,
        previous: Option<&Snapshot>,
    ) -> Result<Arc<Plugin>, ConfigError> {
        // The same bytes under the same name: the running plugin, compiled and checked already.
        let digest = Plugin::digest_of(&component.bytes);
        if let Some(running) = previous.and_then(|previous| previous.plugins.get(name)).filter(|p| p.digest == digest) {
            return Ok(running.clone());
        }
        Plugin::load(&self.services.runtime, name, &component.bytes)
            .and_then(|plugin| match &component.schema {
                Some(schema) => plugin.with_config_schema(schema),
                None => Ok(plugin),
            })
            .map(Arc::new)
            .map_err(|err| {
                let key = format!("plugin.{name}.source");
                self.spanned_error(&written.get_ref().source, &key, format!("plugin {name}: {err}"))
            })
    }
}
