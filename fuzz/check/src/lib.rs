//! The properties lazyxds's fuzz targets assert, one module per input. Each `check`
//! takes raw bytes (libFuzzer's, or a committed corpus file) and panics when a property
//! fails; bytes that are no input of that kind return quietly.
//!
//! The same functions run in three places: the cargo-fuzz targets (`make fuzz`, nightly),
//! the corpus replay test (`tests/corpus.rs`, stable: every committed input, in
//! `make test`), and the regression tests for bugs the fuzzers found.
//!
//! - [`edge_stream`]: a gateway's gRPC stream, frame by frame, into the controller's
//!   decoder (dictionary and seq across messages, `lazyxds_proto::limits`).
//! - [`cluster_name`]: Istio cluster names (`lazyxds_proto::cluster`).
//! - [`authority`]: the short-name rule (`lazyxds_proto::authority`) and the filter's
//!   rewrite (`lazyxds_filter_core::routing`), checked against the controller's expansion.
//! - [`plugin_config`]: the filter's plugin configuration.
//! - [`topology`]: the topology file parser, its depth limit and its errors.

pub mod authority;
pub mod cluster_name;
pub mod edge_stream;
pub mod plugin_config;
pub mod topology;

/// A target's check: panics when a property fails.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus, `fuzz/corpus/<name>/`) and check.
pub const TARGETS: [(&str, Check); 5] = [
    ("edge_stream", edge_stream::check),
    ("cluster_name", cluster_name::check),
    ("authority", authority::check),
    ("plugin_config", plugin_config::check),
    ("topology", topology::check),
];
