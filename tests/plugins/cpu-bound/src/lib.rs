//! A filter that only computes: it imports no host function that waits (no `kv`, `callout` or
//! WASI), so its calls enter the guest directly. A request that carries `x-spin: MS` makes it
//! spin for that many milliseconds of wall-clock time first; one that carries `x-work: N` makes
//! it do N rounds of arithmetic (the same CPU work every time, whatever the clock says); every
//! request gets `x-cpu-bound: served`.

use sluice_sdk::{Decision, Filter, Request, clock, export_filter};

pub struct CpuBound;

impl Filter for CpuBound {
    type Config = ();

    fn new(_config: ()) -> Result<Self, String> {
        Ok(CpuBound)
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        let spin_ms =
            request.header("x-spin").and_then(|value| std::str::from_utf8(&value).ok()?.trim().parse::<u64>().ok());
        if let Some(ms) = spin_ms {
            let until = clock::monotonic_ns().saturating_add(ms.saturating_mul(1_000_000));
            let mut spins: u64 = 0;
            while clock::monotonic_ns() < until {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        let rounds =
            request.header("x-work").and_then(|value| std::str::from_utf8(&value).ok()?.trim().parse::<u64>().ok());
        if let Some(rounds) = rounds {
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
            for round in 0..rounds {
                state = std::hint::black_box(state.rotate_left(7) ^ round).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            }
            let _ = request.set_header("x-work-result", state.to_string());
        }
        let _ = request.set_header("x-cpu-bound", "served");
        Decision::Continue
    }
}

export_filter!(CpuBound);
