//! `sluice:filter/random`: random bytes and numbers, bounded in size.

use super::*;
use crate::bindings::sluice::filter::random;

impl random::Host for FilterState {
    fn bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        // Bounded so that a guest cannot make the host allocate without limit.
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20);
        let mut bytes = vec![0; len];
        rand::rng().fill_bytes(&mut bytes);
        Ok(bytes)
    }

    fn next_u64(&mut self) -> wasmtime::Result<u64> {
        Ok(rand::rng().next_u64())
    }
}
