//! Edges from gateways: the gRPC [`stream`] service decodes each batch ([`decode`], pure)
//! and hands the edges to an [`EdgeSink`](crate::sink::EdgeSink); the debug [`store`]
//! keeps raw edges for `/debug/edges`.

pub mod decode;
pub mod store;
pub mod stream;

pub use decode::{
    Decoder, Limits, DEFAULT_MAX_BATCH_EDGES, DEFAULT_MAX_STREAM_NAMES, MAX_NAME_BYTES,
};
/// One decoded edge; the index's input type.
pub use lazyxds_index::ObservedEdge;
pub use store::{EdgeStats, EdgeStore, RecordOutcome, StoredEdge, DEFAULT_MAX_EDGES};
