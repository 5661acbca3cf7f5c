//! `sluice:filter/log`: guest log lines, tagged with route, filter, tenant and request.
//!
//! A guest shares the log with every other tenant and with the proxy's own lines, so what it
//! writes is bounded and made harmless before it gets there: each line is cut at
//! [`MAX_LINE_BYTES`], control characters are escaped (`\n` as `\\n`, ESC as `\u{1b}`), so no
//! line can forge another or send a terminal escape sequence, and each instance may write its
//! tenant's `log_lines_per_second` (a burst of twice that). Lines past the rate are dropped and
//! counted in `sluice_filter_log_lines_dropped_total`. WASI stdout and stderr go through the same
//! [`GuestLog`].

use std::fmt::Write as _;
use std::sync::Mutex;

use super::*;
use crate::bindings::sluice::filter::log;

/// Longest guest log line kept, in bytes; the rest is cut.
pub const MAX_LINE_BYTES: usize = 4096;

/// One instance's log budget: a token bucket of lines.
#[derive(Debug)]
pub(crate) struct GuestLog {
    bucket: Mutex<Bucket>,
    per_second: f64,
    /// Where drops are counted, and under which labels (the series appears with the first).
    dropped: Family<PluginMetricLabels, Counter>,
    labels: PluginMetricLabels,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl GuestLog {
    /// A budget of `per_second` lines (a burst of twice that); drops count in `dropped` under
    /// `labels`.
    pub(crate) fn new(
        per_second: u32,
        dropped: Family<PluginMetricLabels, Counter>,
        labels: PluginMetricLabels,
    ) -> Self {
        let per_second = f64::from(per_second.max(1));
        let bucket = Mutex::new(Bucket { tokens: per_second * 2.0, refilled: Instant::now() });
        Self { bucket, per_second, dropped, labels }
    }

    /// Counts a line dropped for another reason than the rate (too many in one call).
    pub(crate) fn count_dropped(&self) {
        self.dropped.get_or_create(&self.labels).inc();
    }

    /// Whether one more line may be written now; counts it as dropped if not.
    pub(crate) fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let refill = now.saturating_duration_since(bucket.refilled).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.per_second * 2.0);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            drop(bucket);
            self.dropped.get_or_create(&self.labels).inc();
            false
        }
    }
}

/// `text` as one safe log line: control characters escaped, cut at [`MAX_LINE_BYTES`].
pub(crate) fn escape_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len().min(MAX_LINE_BYTES) + 16);
    for (index, character) in text.char_indices() {
        if line.len() >= MAX_LINE_BYTES {
            let _ = write!(line, "... ({} more bytes)", text.len() - index);
            break;
        }
        match character {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            control if control.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", u32::from(control));
            }
            other => line.push(other),
        }
    }
    line
}

impl log::Host for FilterState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        if !self.log.admit() {
            return Ok(());
        }
        let message = escape_line(&message);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cannot_forge_lines_or_send_escapes() {
        assert_eq!(escape_line("ok\nINFO request route=admin"), "ok\\nINFO request route=admin");
        assert_eq!(escape_line("\u{1b}[31mred\r"), "\\u{1b}[31mred\\r");
        assert_eq!(escape_line("plain text é"), "plain text é");
    }

    #[test]
    fn long_lines_are_cut() {
        let line = escape_line(&"x".repeat(MAX_LINE_BYTES * 3));
        assert!(line.len() < MAX_LINE_BYTES + 32, "{}", line.len());
        assert!(line.ends_with(&format!("... ({} more bytes)", MAX_LINE_BYTES * 2)));
    }

    #[test]
    fn the_rate_drops_and_counts_past_its_burst() {
        let dropped = Family::<PluginMetricLabels, Counter>::default();
        let labels = vec![("route".to_owned(), "r".to_owned())];
        let log = GuestLog::new(10, dropped.clone(), labels.clone());
        let admitted = (0..100).filter(|_| log.admit()).count();
        // A burst of twice the rate, plus whatever refilled meanwhile.
        assert!((20..=22).contains(&admitted), "{admitted}");
        assert_eq!(dropped.get_or_create(&labels).get(), 100 - admitted as u64);
    }
}
