//! `sluice:filter/trace` (0.1.3): the filter call's span in the request's trace. The host keeps
//! what the guest adds, within bounds, and hands it to the proxy with the call's end
//! ([`TraceNotes`]), which puts it on the span: this crate knows no tracing library.

use super::*;
use crate::bindings::sluice::filter::trace;

/// Longest attribute key or event name, in bytes.
pub const MAX_TRACE_KEY_BYTES: usize = 128;
/// Longest attribute value, in bytes; longer ones are cut at a character boundary.
pub const MAX_TRACE_VALUE_BYTES: usize = 1024;
/// Most attributes one call sets on its span.
pub const MAX_TRACE_ATTRIBUTES: usize = 32;
/// Most events one call adds to its span.
pub const MAX_TRACE_EVENTS: usize = 32;
/// Most attributes one event has.
pub const MAX_EVENT_ATTRIBUTES: usize = 16;

/// The trace a filter call belongs to, when its request is traced: what `trace-id` answers and
/// what the call's callouts carry.
#[derive(Debug, Clone)]
pub struct CallTrace {
    /// The trace id, 32 lowercase hexadecimal digits.
    pub trace_id: Arc<str>,
    /// The call span's `traceparent`.
    pub traceparent: HeaderValue,
    /// The trace's `tracestate`, if it has one.
    pub tracestate: Option<HeaderValue>,
}

/// What a guest added to its call's span.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TraceNotes {
    /// Attributes, each key once (its last value).
    pub attributes: Vec<(String, String)>,
    /// Events, in the order added.
    pub events: Vec<TraceEvent>,
    /// Attributes and events dropped past the bounds.
    pub dropped: u32,
}

/// An event on a filter call's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Its name.
    pub name: String,
    /// Its attributes.
    pub attributes: Vec<(String, String)>,
}

/// `text` cut to at most `limit` bytes, at a character boundary.
fn bounded(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Whether a key or name is within bounds (an empty or too long one is dropped, not cut, since a
/// cut key would be another key) and not in the host's own `sluice.` namespace, whose
/// attributes say what the host saw and must not be overwritten by the guest.
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_TRACE_KEY_BYTES && !key.starts_with("sluice.")
}

impl FilterState {
    /// The notes of the current call, when its request is traced.
    fn notes(&mut self) -> Option<&mut TraceNotes> {
        self.trace.as_ref()?;
        Some(self.trace_notes.get_or_insert_with(Box::default))
    }
}

impl trace::Host for FilterState {
    fn trace_id(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.trace.as_ref().map(|trace| trace.trace_id.to_string()))
    }

    fn set_attribute(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        let Some(notes) = self.notes() else { return Ok(()) };
        if !valid_key(&key) {
            notes.dropped += 1;
            return Ok(());
        }
        let value = bounded(value, MAX_TRACE_VALUE_BYTES);
        if let Some(existing) = notes.attributes.iter_mut().find(|(existing, _)| *existing == key) {
            existing.1 = value;
        } else if notes.attributes.len() < MAX_TRACE_ATTRIBUTES {
            notes.attributes.push((key, value));
        } else {
            notes.dropped += 1;
        }
        Ok(())
    }

    fn add_event(&mut self, name: String, attributes: Vec<(String, String)>) -> wasmtime::Result<()> {
        let Some(notes) = self.notes() else { return Ok(()) };
        if !valid_key(&name) || notes.events.len() >= MAX_TRACE_EVENTS {
            notes.dropped += 1;
            return Ok(());
        }
        let offered = attributes.len();
        let attributes: Vec<(String, String)> = attributes
            .into_iter()
            .filter(|(key, _)| valid_key(key))
            .take(MAX_EVENT_ATTRIBUTES)
            .map(|(key, value)| (key, bounded(value, MAX_TRACE_VALUE_BYTES)))
            .collect();
        notes.dropped += u32::try_from(offered - attributes.len()).unwrap_or(u32::MAX);
        notes.events.push(TraceEvent { name, attributes });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("ab€".to_owned(), 4), "ab");
        assert_eq!(bounded("abc".to_owned(), 4), "abc");
    }
}
