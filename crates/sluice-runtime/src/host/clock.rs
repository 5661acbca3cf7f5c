//! `sluice:filter/clock`: wall-clock and monotonic time.

use super::*;
use crate::bindings::sluice::filter::clock;

impl clock::Host for FilterState {
    fn now_unix_ms(&mut self) -> wasmtime::Result<u64> {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.services.started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}
