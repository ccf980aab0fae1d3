//! The lazyxds wire contract and the Istio vocabulary shared by the filter and the
//! controller.
//!
//! - [`v1`]: the `lazyxds.v1` protobuf messages (prost; tonic stubs with the `grpc`
//!   feature).
//! - [`authority`]: Istio's short-name rule (`reviews`, `reviews.ns`, `reviews.ns.svc`).
//! - [`cluster`]: Istio cluster names (`outbound|port|subset|host`, ...) as typed values.
//! - [`identity`]: Istio SPIFFE identities.
//! - [`limits`]: the stream's limits both ends agree on.
#![forbid(unsafe_code)]

pub mod authority;
pub mod cluster;
pub mod identity;
pub mod limits;

/// Messages of `proto/lazyxds/v1/edges.proto`.
pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/lazyxds.v1.rs"));
}

/// gRPC service path of the edge stream, as Envoy's `open_grpc_stream` needs it.
pub const EDGE_SINK_SERVICE: &str = "lazyxds.v1.EdgeSink";
/// gRPC method of the edge stream.
pub const EDGE_SINK_METHOD: &str = "Stream";
