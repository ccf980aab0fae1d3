//! End-to-end harness for lazyxds: a real Envoy loading the lazyxds Wasm filter, the real
//! controller, in-process backends, and clients posing as many workloads (one 127.0.0.x
//! source address each). Used by `tests/envoy_filter.rs` and the `demo` binary.
//!
//! Everything listens on 127.0.0.1 only. Processes are children of the test process and are
//! killed by PID when their handle is dropped.

#![deny(unsafe_code)]

pub mod backend;
pub mod client;
pub mod client_sidecar;
pub mod cluster;
pub mod controller;
pub mod dns;
pub mod edges;
pub mod envoy;
pub mod gateway;
pub mod grpc;
pub mod istio;
pub mod mesh;
pub mod paths;
pub mod pki;
pub mod ports;
pub mod process;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(true);

/// Turns the harness's progress lines on stderr (process started, ready after …) on or off.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// A progress line on stderr, unless turned off.
pub fn note(msg: std::fmt::Arguments<'_>) {
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!("{msg}");
    }
}

pub use backend::Backend;
pub use client::{request, run_load, Outcome, Planned, Response};
pub use controller::{Controller, EdgeRow};
pub use edges::{expected_edges, EdgeKey};
pub use envoy::{Envoy, StartOptions};
pub use gateway::{hosts, GatewayConfig, Stack};
pub use ports::free_port;
