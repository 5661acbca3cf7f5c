//! Shadow runs: a filter's `shadow` version decides on a copy of what the filter sees, in a task
//! of its own, and its decisions are compared with the filter's and counted
//! ([`crate::telemetry::shadows`]). Nothing it decides reaches the request or the response.
//!
//! What a shadowed request pays is bounded: per phase, a copy of the filter's input (the head,
//! and the body for a body phase) and of its result, and a send on a queue that never waits.
//! The shadow checks out its own instance (never waiting for one), runs on its own task, and is
//! dropped, uncompared, when it falls behind ([`QUEUED_STEPS`]) or when its filter already has
//! [`MAX_RUNS_IN_FLIGHT`](crate::telemetry::shadows::MAX_RUNS_IN_FLIGHT) runs going. A shadow
//! that fails (a trap, a loop stopped by its CPU limit) is counted, logged, and not started
//! again for [`PAUSE_AFTER_FAILURE`], so a broken shadow costs the worker at most one failing
//! call's first milliseconds per pause.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::telemetry::shadows::{Outcome, PAUSE_AFTER_FAILURE, ShadowTally};
use sluice_runtime::{CallContext, FilterInstance, FilterPool, RequestHead};

/// Phases a run may have waiting for its shadow; past it the run is dropped uncompared.
pub const QUEUED_STEPS: usize = 8;

/// The input of one phase, copied for the shadow.
pub(crate) enum Input {
    /// `on-request`.
    Request(RequestHead),
    /// `on-request-body`.
    RequestBody(RequestHead, Bytes),
    /// `on-response`.
    Response(RequestHead, http::response::Parts),
    /// `on-response-body`, buffered whole.
    ResponseBody(RequestHead, http::response::Parts, Bytes),
}

impl Input {
    fn phase(&self) -> &'static str {
        match self {
            Input::Request(_) => "request_headers",
            Input::RequestBody(..) => "request_body",
            Input::Response(..) => "response_headers",
            Input::ResponseBody(..) => "response_body",
        }
    }
}

/// A copy of a request head (`Parts` itself cannot be cloned: its extensions may not be).
pub(crate) fn copy_request(head: &RequestHead) -> RequestHead {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = head.parts.method.clone();
    parts.uri = head.parts.uri.clone();
    parts.version = head.parts.version;
    parts.headers = head.parts.headers.clone();
    RequestHead { parts, cache_key: head.cache_key.clone() }
}

/// A copy of a response head.
pub(crate) fn copy_response(parts: &http::response::Parts) -> http::response::Parts {
    let (mut copy, ()) = http::Response::new(()).into_parts();
    copy.status = parts.status;
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// One phase for the shadow: what the filter got, and what it made of it.
struct Step {
    input: Input,
    real: Outcome,
}

/// A request's shadow run: the queue to the task that runs the shadow.
pub(crate) struct ShadowRun {
    steps: mpsc::Sender<Step>,
    tally: Arc<ShadowTally>,
}

impl ShadowRun {
    /// Starts a run of `pool` (the shadow's) for one request, unless the shadow is resting after
    /// a failure or already has
    /// [`MAX_RUNS_IN_FLIGHT`](crate::telemetry::shadows::MAX_RUNS_IN_FLIGHT) runs.
    pub(crate) fn start(pool: Arc<FilterPool>, context: CallContext, tally: Arc<ShadowTally>) -> Option<Self> {
        if tally.paused() {
            tally.skip();
            return None;
        }
        let Ok(slot) = tally.runs.clone().try_acquire_owned() else {
            tally.skip();
            return None;
        };
        let (steps, queue) = mpsc::channel(QUEUED_STEPS);
        let run_tally = tally.clone();
        tokio::spawn(async move {
            let _slot = slot;
            run(pool, context, queue, run_tally).await;
        });
        Some(Self { steps, tally })
    }

    /// Ends the run uncompared (the real call failed).
    pub(crate) fn skip(&self) {
        self.tally.skip();
    }

    /// Hands the shadow one phase: a copy of what the filter got, and what it made of it. Never
    /// waits; a shadow that has fallen behind is dropped (`false`).
    pub(crate) fn send(&self, input: Input, real: Outcome) -> bool {
        match self.steps.try_send(Step { input, real }) {
            Ok(()) => true,
            Err(_) => {
                self.tally.skip();
                false
            }
        }
    }
}

/// The shadow's side of a run: its own instance, each phase on its copy, each outcome compared.
async fn run(pool: Arc<FilterPool>, context: CallContext, mut queue: mpsc::Receiver<Step>, tally: Arc<ShadowTally>) {
    let request_id = context.request_id.clone();
    let mut instance = match pool.checkout_if_free(context).await {
        Some(Ok(instance)) => instance,
        Some(Err(error)) => {
            tally.failed_now();
            log_failure(&tally, &request_id, &error);
            return;
        }
        None => {
            tally.skip();
            return;
        }
    };
    while let Some(Step { input, real }) = queue.recv().await {
        let phase = input.phase();
        match call(&mut instance, input).await {
            Ok(shadow) => tally.record(&request_id, phase, &real, &shadow),
            Err(error) => {
                tally.failed_now();
                log_failure(&tally, &request_id, &error);
                return;
            }
        }
    }
}

async fn call(instance: &mut FilterInstance, input: Input) -> Result<Outcome, sluice_runtime::FilterError> {
    match input {
        Input::Request(mut head) => {
            let outcome = instance.on_request(&mut head).await?;
            Ok(Outcome::of_head(&outcome, &head.parts.headers))
        }
        Input::RequestBody(mut head, body) => {
            let outcome = instance.on_request_body(&mut head, body).await?;
            Ok(Outcome::of_body(&outcome, &head.parts.headers))
        }
        Input::Response(mut head, mut response) => {
            let outcome = instance.on_response(&mut head, &mut response).await?;
            Ok(Outcome::of_head(&outcome, &response.headers))
        }
        Input::ResponseBody(mut head, mut response, body) => {
            let outcome = instance.on_response_body(&mut head, &mut response, true, body, true).await?;
            Ok(Outcome::of_body(&outcome, &response.headers))
        }
    }
}

fn log_failure(tally: &ShadowTally, request_id: &str, error: &sluice_runtime::FilterError) {
    tracing::warn!(
        target: "sluice::shadow",
        route = %tally.route,
        filter = %tally.place,
        shadow = %tally.plugin,
        request_id,
        error.kind = error.kind_name(),
        guest_message = error.guest_message.as_deref().unwrap_or(""),
        "the shadow failed (the request is not affected; the shadow rests for {} s): {}",
        PAUSE_AFTER_FAILURE.as_secs(),
        error.kind
    );
}
