use sluice_sdk::{Decision, Filter, Request, export_filter};

struct Hello;

impl Filter for Hello {
    type Config = ();
    fn new(_config: ()) -> Result<Self, String> {
        Ok(Hello)
    }
    fn on_request(&mut self, request: &Request) -> Decision {
        let _ = request.set_header("x-hello", "from a Wasm filter");
        Decision::Continue
    }
}
export_filter!(Hello);
