//! Host bindings generated from `wit/`, the one source of truth of the plugin interface.

#![allow(missing_docs, unreachable_pub)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "sluice:filter/plugin",
    imports: {
        "sluice:filter/callout.send": async | trappable,
        "sluice:filter/kv.get": async | trappable,
        "sluice:filter/kv.set": async | trappable,
        "sluice:filter/kv.increment": async | trappable,
        "sluice:filter/kv.delete": async | trappable,
        "sluice:filter/kv.compare-and-swap": async | trappable,
        "sluice:filter/kv.take-tokens": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "sluice:filter/http.request": RequestHandle,
        "sluice:filter/http.response": ResponseHandle,
    },
});

/// Marker for the `request` resource: the handle always refers to the request slot of the store
/// it was given to.
#[allow(unreachable_pub)]
pub struct RequestHandle;
/// Marker for the `response` resource.
#[allow(unreachable_pub)]
pub struct ResponseHandle;
