//! The lazyxds controller's pure core: no I/O, no clock, no async.
//!
//! - [`Index`]: watched objects (projected), pods by IP, learned deps per workload;
//!   watched objects in through one [`Projection`](index::Projection) per kind, edges
//!   through [`Index::record_edges`], time through [`Index::tick`].
//! - [`reconcile()`]: one [`Pass`] from the index: desired Sidecars (and refusals), the
//!   gateway's objects, the namespace table; what every target applies.
//! - [`desired()`]: the Sidecar every opted-in workload should have, or why not.
//! - [`gateway`]: the lazy gateway's routing objects and the namespace table its filter
//!   gets, so a first call through it is routed as the caller's sidecar would have.
//! - [`istio`]: Istio's objects, typed: the Sidecar, the gateway's, the install's.
//! - [`decode`]: a gateway's edge stream, batch by batch: dictionary, seq, limits.
//! - [`Topology`]: a mesh described in a YAML file, fed to the index like kube watchers.
//! - [`report()`]: what scoping removes from each sidecar's config.
#![forbid(unsafe_code)]
// Everything here handles input from the wire, the API or files: no panics by
// construction (as in `filter/core`).
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

pub mod decode;
pub mod desired;
pub mod destination_rule;
pub mod discovery;
pub mod error;
pub mod gateway;
pub mod host;
pub mod index;
pub mod istio;
pub mod labels;
pub mod objects;
pub mod reconcile;
pub mod report;
pub mod topology;

#[cfg(test)]
mod fixtures;

pub use desired::{
    desired, outbound_policy, sidecar_name, Desired, Refusal, RefusalReason, RenderConfig,
};
pub use discovery::{LabelSelector, MeshConfig};
pub use error::{Error, TopologyError};
pub use gateway::{gateway_objects, namespace_table, GatewayObjects, JsonText};
pub use index::{Counters, Index, IndexConfig, ObservedEdge, RefusedEdge};
pub use istio::{OutboundPolicy, Sidecar};
pub use objects::{
    Annotations, AuthorizationAction, AuthorizationPolicy, ConnectionPolicy, DestinationRule, Job,
    Labels, Namespace, OwnerRef, Pin, Pod, Protocol, ReplicaSet, RestoredDeps, Service,
    ServiceEntry, ServiceEntryPort, ServicePort, SidecarObject, UpstreamTls, VirtualService,
    WorkloadId, WorkloadKind, WorkloadObject,
};
pub use reconcile::{reconcile, Pass};
pub use report::{report, Report, Status, Totals, WorkloadReport};
pub use topology::{Gateway, IndexObjects, Removal, Topology};
