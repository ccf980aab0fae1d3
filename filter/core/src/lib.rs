//! The lazyxds gateway filter's logic, with no proxy-wasm dependency, so it is tested
//! natively and on wasm32 alike. The wasm shell (`lazyxds-filter`) only moves property
//! values, time and stream events in, and bytes out.
//!
//! - [`config`]: the plugin configuration.
//! - [`authority`]: short authorities as a pod's DNS search path reads them; SPIFFE ids.
//! - [`routing`]: first-call routing decisions (authority rewrite, policy, waiting).
//! - [`edge`]: request properties → an edge (or a counted skip).
//! - [`table`]: the bounded LRU dedup table.
//! - [`grpc_service`]: the gRPC service Envoy opens the edge stream on (cluster, authority).
//! - [`flows`]: what the shell remembers of a request between its callbacks (bounded).
//! - [`connections`]: each downstream connection's source and peer identity, read once.
//! - [`reporter`]: batching, dictionary encoding, acks, re-sends, resync, backoff.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod authority;
pub mod config;
pub mod connections;
pub mod edge;
pub mod flows;
pub mod grpc_service;
pub mod reporter;
pub mod routing;
pub mod table;

#[cfg(test)]
mod reporter_tests;

pub use config::{Config, ConfigError};
pub use connections::{Connections, Peer};
pub use edge::{edge_cluster, CheckedProperties, EdgeCluster, RequestProperties};
pub use flows::{Flow, Flows};
pub use reporter::{CloseReason, Counters, Reporter};
pub use routing::{Decision, RequestView, Router, RoutingCounters};
