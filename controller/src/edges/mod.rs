//! Edges from gateways: the gRPC [`stream`] service decodes each batch ([`decode`], pure,
//! in the index crate: `lazyxds_index::decode`) and hands the edges to an [`EdgeSink`](crate::sink::EdgeSink); the debug [`store`]
//! keeps raw edges for `/debug/edges`.
// Handles input from gateways, files and flags: no panics by construction (as in
// `filter/core`; a stream task that panics anyway is supervised, see `edges::stream`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod auth;
pub mod listen;
pub mod store;
pub mod stream;
pub mod tls;
pub mod xfcc;

pub use decode::{
    Decoder, Limits, DEFAULT_MAX_BATCH_EDGES, DEFAULT_MAX_STREAM_NAMES, MAX_NAME_BYTES,
};
/// The pure batch decoder lives with the rest of the pure core (`controller/index/`).
pub use lazyxds_index::decode;
/// One decoded edge; the index's input type.
pub use lazyxds_index::ObservedEdge;
pub use store::{EdgeStats, EdgeStore, RecordOutcome, StoredEdge, DEFAULT_MAX_EDGES};
