//! The lazyxds controller's pure core: no I/O, no clock, no async.
//!
//! - [`Index`]: watched objects (projected), pods by IP, learned deps per workload;
//!   edges in through [`Index::record_edges`], time through [`Index::tick`].
//! - [`desired()`]: the Sidecar every opted-in workload should have, or why not.
//! - [`Topology`]: a mesh described in a YAML file, fed to the index like kube watchers.
//! - [`report()`]: what scoping removes from each sidecar's config.
#![forbid(unsafe_code)]

pub mod desired;
pub mod error;
pub mod host;
pub mod index;
pub mod objects;
pub mod report;
pub mod sidecar;
pub mod topology;

#[cfg(test)]
mod fixtures;

pub use desired::{desired, sidecar_name, Desired, Refusal, RefusalReason, RenderConfig};
pub use error::{Error, TopologyError};
pub use index::{Counters, Index, IndexConfig, ObservedEdge};
pub use objects::{
    Annotations, Job, Labels, Namespace, OwnerRef, Pin, Pod, Protocol, ReplicaSet, RestoredDeps,
    Service, ServiceEntry, ServiceEntryPort, ServicePort, SidecarObject, VirtualService,
    WorkloadId, WorkloadKind, WorkloadObject,
};
pub use report::{report, Report, Status, Totals, WorkloadReport};
pub use sidecar::{OutboundPolicy, Sidecar};
pub use topology::{Gateway, IndexObjects, Topology};
