//! Host bindings generated from `wit/`, the one source of truth of the plugin interface.

#![allow(missing_docs, unreachable_pub)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "sluice:filter/plugin",
    imports: {
        "sluice:filter/callout.send": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "sluice:filter/http.request": crate::host::RequestHandle,
        "sluice:filter/http.response": crate::host::ResponseHandle,
    },
});
