//! The lazyxds controller: thin shells around the pure index (see `ARCHITECTURE.md`).
//!
//! - [`runtime`]: `lazyxds run`: picks the mode and wires its parts.
//! - [`edges`]: the gRPC edge stream, its decoder (pure) and the debug edge store.
//! - [`sink`]: the [`sink::EdgeSink`] seam where decoded edges go.
//! - [`http`]: debug and health endpoints; [`ready`]: what `/readyz` says.
//! - [`learn`]: the sink that feeds edges into the dependency index.
//! - [`target`]: the one loop: a reconcile pass, applied by a [`target::Target`].
//! - [`filemode`]: `run --file`: topology file in, Sidecar YAML files out.
//! - [`install`]: `lazyxds install` / `uninstall`: the manifests, rendered.
//! - [`kube`]: `run --kube`: watchers into the index, the cluster as the target.
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
pub mod ready;
pub mod runtime;
pub mod sink;
pub mod target;

pub use error::{BatchError, FileModeError};
