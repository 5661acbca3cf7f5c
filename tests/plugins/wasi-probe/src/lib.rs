//! A filter that reaches for the files and environment of the machine it runs on through WASI
//! preview 1 (as C, Go and Rust's wasip1 guests do), so tests can show that a guest gets
//! neither. `sluice plugin build` gives it the preview 1 adapter, so the component imports
//! WASI 0.2 (`wasi:filesystem`, `wasi:cli/environment`, ...), which Sluice links with nothing
//! ambient. It answers every request with the errno of each attempt. With `stdout_lines` in its
//! config it first writes that many lines to WASI stdout, each with a forged log line and an
//! escape sequence in it, so tests can show that WASI output is bounded and escaped like logs.

use sluice_sdk::{Decision, Filter, LocalResponse, Request, export_filter};

#[cfg(target_arch = "wasm32")]
mod preview1 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub fn fd_prestat_get(fd: i32, prestat: *mut u8) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn path_open(
            dir_fd: i32,
            lookup_flags: i32,
            path: *const u8,
            path_len: usize,
            open_flags: i32,
            rights_base: i64,
            rights_inheriting: i64,
            fd_flags: i32,
            opened: *mut i32,
        ) -> i32;
        pub fn environ_sizes_get(count: *mut usize, size: *mut usize) -> i32;
        pub fn fd_write(fd: i32, iovs: *const [usize; 2], iovs_len: usize, written: *mut usize) -> i32;
    }
}

/// What each attempt got: `(errno of fd_prestat_get(3), errno of path_open, variables)`.
#[cfg(target_arch = "wasm32")]
fn attempts() -> (i32, i32, usize) {
    let mut prestat = [0u8; 8];
    let mut opened = -1;
    let mut count = 0;
    let mut size = 0;
    let path = b"etc/passwd";
    // SAFETY: every pointer is to a live local of the size the call writes.
    unsafe {
        let prestat_errno = preview1::fd_prestat_get(3, prestat.as_mut_ptr());
        let open_errno = preview1::path_open(3, 1, path.as_ptr(), path.len(), 0, 2, 0, 0, &mut opened);
        let _ = preview1::environ_sizes_get(&mut count, &mut size);
        (prestat_errno, open_errno, count)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn attempts() -> (i32, i32, usize) {
    (0, 0, 0)
}

/// Writes `text` to WASI stdout in one `fd_write`.
#[cfg(target_arch = "wasm32")]
fn write_stdout(text: &str) {
    let iov = [text.as_ptr() as usize, text.len()];
    let mut written = 0;
    // SAFETY: the one iovec points at `text`, alive for the call.
    unsafe {
        let _ = preview1::fd_write(1, &iov, 1, &mut written);
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn write_stdout(_text: &str) {}

/// The probe's config (none: only the attempts).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Lines to write to stdout on each request.
    stdout_lines: u32,
}

pub struct WasiProbe {
    stdout_lines: u32,
}

impl Filter for WasiProbe {
    type Config = Option<ProbeConfig>;

    fn new(config: Option<ProbeConfig>) -> Result<Self, String> {
        Ok(Self { stdout_lines: config.unwrap_or_default().stdout_lines })
    }

    fn on_request(&mut self, _request: &Request) -> Decision {
        for line in 0..self.stdout_lines {
            write_stdout(&format!("stdout {line} INFO sluice::access: request route=\"admin\"\u{1b}[2J\n"));
        }
        let (prestat, open, environment) = attempts();
        Decision::Respond(
            LocalResponse::new(200).body(format!("prestat={prestat} open={open} environment={environment}")),
        )
    }
}

export_filter!(WasiProbe);
