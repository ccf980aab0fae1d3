//! The lazyxds controller.
//!
//! - [`edges`]: decoding gateway edge batches and the in-memory edge store (pure).
//! - [`sink`]: the [`sink::EdgeSink`] seam where decoded edges go.
//! - [`grpc`]: the `lazyxds.v1.EdgeSink` tonic service, generic over the sink.
//! - [`http`]: debug and health endpoints.
#![forbid(unsafe_code)]

pub mod counters;
pub mod edges;
pub mod error;
pub mod grpc;
pub mod http;
pub mod sink;

pub use error::BatchError;
