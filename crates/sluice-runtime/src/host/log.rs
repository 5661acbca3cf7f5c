//! `sluice:filter/log`: guest log lines, tagged with route, filter, tenant and request.

use super::*;
use crate::bindings::sluice::filter::log;

impl log::Host for FilterState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        // In `configure` there is no request: the line names the instance's route and filter.
        let (route, filter, tenant, request_id): (&str, &str, &str, &str) = match &self.call {
            Some(context) => (&context.route, &context.filter, &context.tenant.name, &context.request_id),
            None => (&self.owner[0], &self.owner[1], &self.owner[2], ""),
        };
        macro_rules! guest_log {
            ($level:expr) => {
                tracing::event!(target: "sluice::filter", $level, route = %route, filter = %filter, tenant = %tenant, request_id = %request_id, "{message}")
            };
        }
        match level {
            types::Level::Trace => guest_log!(tracing::Level::TRACE),
            types::Level::Debug => guest_log!(tracing::Level::DEBUG),
            types::Level::Info => guest_log!(tracing::Level::INFO),
            types::Level::Warn => guest_log!(tracing::Level::WARN),
            types::Level::Error => guest_log!(tracing::Level::ERROR),
        }
        if level == types::Level::Error {
            self.guest_error = Some(message);
        }
        Ok(())
    }
}
