//! The same filter on the upstream proxy-wasm SDK (feature `sdk`, built only for the bench:
//! `make wasm-sdk`), to measure the SDK's dispatcher against `abi.rs`'s own exports. The
//! SDK exports every `proxy_on_*` callback and keeps a context object per request; each of
//! its callbacks here calls the same function the product's export is.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        crate::abi::log(crate::abi::LogLevel::Critical, &format!("lazyxds: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| Box::new(SdkRoot { context_id }));
}}

struct SdkRoot {
    context_id: u32,
}

impl Context for SdkRoot {
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        crate::proxy_on_grpc_receive(self.context_id, token_id, message_size);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        crate::proxy_on_grpc_close(self.context_id, token_id, status_code);
    }
}

impl RootContext for SdkRoot {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        crate::proxy_on_vm_start(self.context_id, vm_configuration_size)
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        crate::proxy_on_configure(self.context_id, plugin_configuration_size)
    }

    fn on_tick(&mut self) {
        crate::proxy_on_tick(self.context_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SdkRequest { context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct SdkRequest {
    context_id: u32,
}

impl Context for SdkRequest {}

impl HttpContext for SdkRequest {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        match crate::proxy_on_request_headers(self.context_id, num_headers, end_of_stream) {
            0 => Action::Continue,
            _ => Action::Pause,
        }
    }

    fn on_log(&mut self) {
        crate::proxy_on_log(self.context_id);
    }
}
