//! The [`Filter`] trait and the glue that routes the host's calls to it.

use serde::de::DeserializeOwned;

use crate::bindings::sluice::filter::types as wit;
use crate::http::{LocalResponse, Request, Response};

pub use wit::Phases;

/// What a header phase decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the next filter, then the upstream (or the client).
    Continue,
    /// Stop and answer with this response instead.
    Respond(LocalResponse),
}

/// What a body phase decides about the chunk it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    /// Pass the chunk on unchanged.
    Pass,
    /// Pass these bytes on instead; empty holds the chunk back (emit held data later, at the
    /// latest when `end_of_stream` is true).
    Replace(Vec<u8>),
    /// Stop and answer with this response (request bodies and buffered response bodies only).
    Respond(LocalResponse),
}

/// A Sluice filter. Every phase has a default that lets the request through; implement the ones
/// you need and list them in [`Filter::phases`].
pub trait Filter: Sized + 'static {
    /// The route's config for this filter, deserialised from JSON. Use `()` for none, or a struct
    /// with `#[serde(default)]` fields for optional settings.
    type Config: DeserializeOwned;

    /// Builds the filter from its config; an `Err` refuses the config (the route does not load,
    /// and the message says why).
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The phases the host should call. Default: the request and response heads.
    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS
    }

    /// The request head, before the upstream is chosen. Default: continue.
    fn on_request(&mut self, request: &Request) -> Decision {
        let _ = request;
        Decision::Continue
    }

    /// The whole request body (with [`Phases::REQUEST_BODY`]); the head may still be changed.
    /// Default: pass.
    fn on_request_body(&mut self, request: &Request, body: Vec<u8>, end_of_stream: bool) -> BodyAction {
        let _ = (request, body, end_of_stream);
        BodyAction::Pass
    }

    /// The response head, before it is sent to the client. Default: continue.
    fn on_response(&mut self, request: &Request, response: &Response) -> Decision {
        let _ = (request, response);
        Decision::Continue
    }

    /// A response body chunk (with [`Phases::RESPONSE_BODY`]), or the whole body (with
    /// [`Phases::BUFFER_RESPONSE_BODY`] too). Default: pass.
    fn on_response_body(
        &mut self,
        request: &Request,
        response: &Response,
        body: Vec<u8>,
        end_of_stream: bool,
    ) -> BodyAction {
        let _ = (request, response, body, end_of_stream);
        BodyAction::Pass
    }
}

impl From<Decision> for wit::Decision {
    fn from(decision: Decision) -> Self {
        match decision {
            Decision::Continue => Self::Continue,
            Decision::Respond(response) => Self::Respond(response.into()),
        }
    }
}

impl From<BodyAction> for wit::BodyAction {
    fn from(action: BodyAction) -> Self {
        match action {
            BodyAction::Pass => Self::Pass,
            BodyAction::Replace(bytes) => Self::Replace(bytes),
            BodyAction::Respond(response) => Self::Respond(response.into()),
        }
    }
}

/// The functions [`export_filter!`](crate::export_filter) calls. Not for direct use.
#[doc(hidden)]
pub mod dispatch {
    use std::any::Any;
    use std::cell::RefCell;

    use super::*;
    use crate::bindings::sluice::filter::http as handles;

    thread_local! {
        /// The instance's filter: one per Wasm instance, which is single-threaded.
        static FILTER: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_filter<F: Filter, R>(run: impl FnOnce(&mut F) -> R) -> R {
        FILTER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let filter = slot
                .as_mut()
                .and_then(|filter| filter.downcast_mut::<F>())
                .expect("the host calls configure before any phase");
            run(filter)
        })
    }

    /// `configure`: deserialise the config, build the filter, report its phases.
    pub fn configure<F: Filter>(config: String) -> Result<Phases, String> {
        // A panic becomes a trap; say why first, so the host's failure log carries the message.
        std::panic::set_hook(Box::new(|info| crate::host::log::error(&format!("panic: {info}"))));
        let parsed: F::Config = match serde_json::from_str(&config) {
            Ok(parsed) => parsed,
            // A route without config sends `null`; a config struct whose fields all have
            // defaults should accept that as "all defaults".
            Err(_) if config.trim() == "null" => {
                serde_json::from_str("{}").map_err(|err| format!("invalid config: {err}"))?
            }
            Err(err) => return Err(format!("invalid config: {err}")),
        };
        let filter = F::new(parsed)?;
        let phases = filter.phases();
        FILTER.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
        Ok(phases)
    }

    /// `on-request`.
    pub fn on_request<F: Filter>(request: &handles::Request) -> wit::Decision {
        with_filter::<F, _>(|filter| filter.on_request(&Request::from_handle(request))).into()
    }

    /// `on-request-body`.
    pub fn on_request_body<F: Filter>(request: &handles::Request, body: Vec<u8>, end: bool) -> wit::BodyAction {
        with_filter::<F, _>(|filter| filter.on_request_body(&Request::from_handle(request), body, end)).into()
    }

    /// `on-response`.
    pub fn on_response<F: Filter>(request: &handles::Request, response: &handles::Response) -> wit::Decision {
        with_filter::<F, _>(|filter| {
            filter.on_response(&Request::from_handle(request), &Response::from_handle(response))
        })
        .into()
    }

    /// `on-response-body`.
    pub fn on_response_body<F: Filter>(
        request: &handles::Request,
        response: &handles::Response,
        body: Vec<u8>,
        end: bool,
    ) -> wit::BodyAction {
        with_filter::<F, _>(|filter| {
            filter.on_response_body(&Request::from_handle(request), &Response::from_handle(response), body, end)
        })
        .into()
    }
}
