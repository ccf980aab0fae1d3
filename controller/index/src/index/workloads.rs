//! Owner references → workloads, and per-workload views for rendering and reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Index;
use crate::objects::{Annotations, Labels, Pin, Pod, WorkloadId, WorkloadKind, WorkloadObject};

/// A workload with what rendering needs: its object (if it has one), pods, labels and
/// the lazyxds annotations that apply to it.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadView<'a> {
    pub id: WorkloadId,
    pub object: Option<&'a WorkloadObject>,
    pub pods: Vec<&'a Arc<Pod>>,
    /// Its pod template's labels; without an object, the labels all its pods share.
    pub labels: Labels,
    /// The workload's own `lazyxds.io/enabled` (object, then template, then pods).
    pub enabled: Option<bool>,
    pub pins: BTreeSet<Pin>,
}

impl Index {
    /// Follows owner references: Pod → ReplicaSet → Deployment, Pod → Job → CronJob,
    /// StatefulSet, DaemonSet; a bare pod (or an unknown controller) is its own workload.
    /// `None` while a ReplicaSet or Job in the chain is not known yet.
    pub(crate) fn workload_of(&self, pod: &Pod) -> Option<WorkloadId> {
        let ns = &pod.namespace;
        let id = |kind, name: &Arc<str>| WorkloadId {
            namespace: ns.clone(),
            kind,
            name: name.clone(),
        };
        let Some(owner) = &pod.owner else {
            return Some(id(WorkloadKind::Pod, &pod.name));
        };
        match &*owner.kind {
            "ReplicaSet" => {
                let rs = self.ns(ns)?.replica_sets.get(&*owner.name)?;
                Some(match &rs.owner {
                    Some(o) if &*o.kind == "Deployment" => id(WorkloadKind::Deployment, &o.name),
                    // A bare ReplicaSet, or one of a controller we do not know (a rollout).
                    _ => id(WorkloadKind::ReplicaSet, &rs.name),
                })
            }
            "Job" => {
                let job = self.ns(ns)?.jobs.get(&*owner.name)?;
                Some(match &job.owner {
                    Some(o) if &*o.kind == "CronJob" => id(WorkloadKind::CronJob, &o.name),
                    _ => id(WorkloadKind::Job, &job.name),
                })
            }
            "StatefulSet" => Some(id(WorkloadKind::StatefulSet, &owner.name)),
            "DaemonSet" => Some(id(WorkloadKind::DaemonSet, &owner.name)),
            _ => Some(id(WorkloadKind::Pod, &pod.name)),
        }
    }

    /// The namespace's parsed annotations, when the Namespace is known.
    pub(crate) fn namespace_annotations(&self, ns: &str) -> Option<&Annotations> {
        Some(&self.ns(ns)?.object.as_ref()?.annotations)
    }

    /// Opted in: the workload's `lazyxds.io/enabled` wins over its namespace's; default off;
    /// never in a namespace Istio's `discoverySelectors` leave out.
    /// Called per changed workload on the edge path, so it looks things up directly
    /// instead of building views.
    pub fn is_enabled(&self, id: &WorkloadId) -> bool {
        if !self.is_discovered(&id.namespace) {
            return false;
        }
        let Some(state) = self.ns(&id.namespace) else {
            return false;
        };
        let own = match state.workloads.get(&(id.kind, id.name.clone())) {
            Some(object) => object_enabled(object),
            None if id.kind == WorkloadKind::Pod => state
                .pods
                .get(&*id.name)
                .and_then(|p| p.annotations.enabled),
            // Derived from pods (first by name with a value), like its view.
            None => state
                .pods
                .values()
                .filter(|p| self.workload_of(p).as_ref() == Some(id))
                .find_map(|p| p.annotations.enabled),
        };
        own.or_else(|| state.object.as_ref().and_then(|n| n.annotations.enabled))
            .unwrap_or(false)
    }

    /// Every workload: those with an object (even without pods) and those derived from pods.
    pub(crate) fn workload_views(&self) -> BTreeMap<WorkloadId, WorkloadView<'_>> {
        self.namespace_names()
            .into_iter()
            .flat_map(|ns| self.views_in(ns))
            .collect()
    }

    /// Workloads of a namespace; none where istiod does not look (`discoverySelectors`).
    pub(crate) fn views_in(&self, ns: &str) -> BTreeMap<WorkloadId, WorkloadView<'_>> {
        let Some(state) = self.ns(ns).filter(|_| self.is_discovered(ns)) else {
            return BTreeMap::new();
        };
        let mut views: BTreeMap<WorkloadId, WorkloadView<'_>> = state
            .workloads
            .values()
            .map(|object| {
                let view = WorkloadView {
                    id: object.id(),
                    object: Some(object),
                    pods: Vec::new(),
                    labels: object.template_labels.clone(),
                    enabled: object_enabled(object),
                    pins: object
                        .annotations
                        .pins
                        .iter()
                        .chain(&object.template_annotations.pins)
                        .cloned()
                        .collect(),
                };
                (view.id.clone(), view)
            })
            .collect();
        for pod in state.pods.values() {
            // Unresolved pods (owner not seen yet) are transient: skipped.
            let Some(id) = self.workload_of(pod) else {
                continue;
            };
            views
                .entry(id.clone())
                .or_insert_with(|| WorkloadView {
                    id,
                    object: None,
                    pods: Vec::new(),
                    labels: Labels::new(),
                    enabled: None,
                    pins: BTreeSet::new(),
                })
                .pods
                .push(pod);
        }
        for view in views.values_mut().filter(|v| v.object.is_none()) {
            view.labels = shared_labels(&view.pods);
            view.enabled = view.pods.iter().find_map(|p| p.annotations.enabled);
            view.pins = view
                .pods
                .iter()
                .flat_map(|p| p.annotations.pins.iter().cloned())
                .collect();
        }
        views
    }
}

fn object_enabled(object: &WorkloadObject) -> Option<bool> {
    object
        .annotations
        .enabled
        .or(object.template_annotations.enabled)
}

/// Labels every pod carries with the same value.
fn shared_labels(pods: &[&Arc<Pod>]) -> Labels {
    let Some((first, rest)) = pods.split_first() else {
        return Labels::new();
    };
    first
        .labels
        .iter()
        .filter(|(k, v)| rest.iter().all(|p| p.labels.get(k) == Some(*v)))
        .collect()
}
