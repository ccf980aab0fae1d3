//! The lazyxds controller.
//!
//! - [`edges`]: the gRPC edge stream, its decoder (pure) and the debug edge store.
//! - [`sink`]: the [`sink::EdgeSink`] seam where decoded edges go.
//! - [`http`]: debug and health endpoints.
//! - [`learn`]: the sink that feeds edges into the dependency index.
//! - [`filemode`]: `run --file`: topology file in, Sidecar YAML files out.
//! - [`install`]: `lazyxds install` / `uninstall`: the manifests, rendered.
//! - [`kube`]: `run --kube`: watchers into the index, the Sidecar writer.
#![forbid(unsafe_code)]

pub mod counters;
pub mod edges;
pub mod error;
pub mod filemode;
pub mod http;
pub mod install;
pub mod kube;
pub mod learn;
pub mod metrics;
pub mod runtime;
pub mod sink;
pub mod target;

pub use error::{BatchError, FileModeError};
