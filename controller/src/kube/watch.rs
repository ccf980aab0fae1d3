//! Watchers: one kube-runtime watcher per kind, each event projected into the index at
//! once (no object store). A kind counts as synced after its first complete list; the
//! writer waits for every kind, so the first write sees the restored state.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use lazyxds_index::{Index, MeshConfig, WorkloadKind};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch as signal;

use super::istio_resource;
use super::project::{self, Projected};
use crate::learn::SharedLearner;

/// The kill switch: ConfigMap `lazyxds` in the controller's namespace; `enabled: "false"`
/// makes the writer delete every Sidecar we own.
pub const KILL_SWITCH_CONFIGMAP: &str = "lazyxds";

/// Istio's mesh config: ConfigMap `istio` in `istio-system`, key `mesh`.
pub const ISTIO_NAMESPACE: &str = "istio-system";
pub const MESH_CONFIGMAP: &str = "istio";

/// Every kind watched, by name; the writer starts when all are synced.
pub const KINDS: [&str; 14] = [
    "configmap",
    "meshconfig",
    "namespaces",
    "pods",
    "replicasets",
    "jobs",
    "deployments",
    "statefulsets",
    "daemonsets",
    "cronjobs",
    "services",
    "serviceentries",
    "virtualservices",
    "sidecars",
];

/// A Sidecar as seen in the cluster, for the writer's diff. Compact: the spec is kept as
/// its JSON text (a parsed `Value` costs several times more, for every Sidecar of the
/// mesh), and a Sidecar that is not ours keeps nothing but that fact.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSidecar {
    /// Carries `app.kubernetes.io/managed-by: lazyxds`.
    pub ours: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec` as compact JSON (`serde_json::to_string`: keys sorted, so equal specs give
    /// equal text); empty when not ours.
    pub spec: String,
}

impl LiveSidecar {
    /// Ours (by its labels): keeps what the writer compares; else only that it is not ours.
    pub fn new(
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        spec: &Value,
    ) -> Self {
        let ours = labels
            .get(lazyxds_index::objects::LABEL_MANAGED_BY)
            .map(String::as_str)
            == Some(lazyxds_index::objects::MANAGED_BY_US);
        if !ours {
            return LiveSidecar {
                ours,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                spec: String::new(),
            };
        }
        LiveSidecar {
            ours,
            labels,
            annotations,
            spec: spec_text(spec),
        }
    }

    /// The spec, parsed (`Null` when not kept).
    pub fn spec(&self) -> Value {
        serde_json::from_str(&self.spec).unwrap_or(Value::Null)
    }
}

/// A spec's text as [`LiveSidecar::spec`] keeps it.
pub fn spec_text(spec: &Value) -> String {
    if spec.is_null() {
        return String::new();
    }
    let mut text = spec.to_string();
    text.shrink_to_fit();
    text
}

/// State the watchers share with the writer and the HTTP server.
#[derive(Debug, Default)]
pub struct Watched {
    /// Every Sidecar in the cluster by (namespace, name).
    pub sidecars: Mutex<BTreeMap<(String, String), LiveSidecar>>,
    pub invalid_annotations: AtomicU64,
    pub watch_errors: AtomicU64,
    pub events: AtomicU64,
}

impl Watched {
    pub fn sidecars(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), LiveSidecar>> {
        self.sidecars.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Ctx {
    learner: SharedLearner,
    watched: Arc<Watched>,
    synced: signal::Sender<Vec<&'static str>>,
}

impl Ctx {
    fn warn_invalid<T>(&self, projected: Projected<T>) -> T {
        if let Some(warning) = projected.warning {
            self.watched.invalid_annotations.fetch_add(1, Relaxed);
            tracing::warn!("{warning} (ignored)");
        }
        projected.value
    }
}

/// How one kind maps onto the index.
struct Kind<K, P> {
    name: &'static str,
    project: fn(&Ctx, &K) -> Option<P>,
    apply: fn(&mut Index, P),
    delete: fn(&mut Index, &ObjectMeta),
    reset: fn(&mut Index, Vec<P>),
    /// Called when a (re)list starts and for every deleted object, for side tables.
    on_init: fn(&Ctx),
    on_delete: fn(&Ctx, &ObjectMeta),
}

fn nothing(_: &Ctx) {}
fn nothing_deleted(_: &Ctx, _: &ObjectMeta) {}

fn ns_name(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

async fn run_kind<K, P>(api: Api<K>, kind: Kind<K, P>, ctx: Arc<Ctx>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut initial: Option<Vec<P>> = None;
    let mut synced_once = false;
    let stream = kube::runtime::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                ctx.watched.watch_errors.fetch_add(1, Relaxed);
                tracing::warn!(kind = kind.name, %error, "watch failed; retrying with backoff");
                continue;
            }
        };
        ctx.watched.events.fetch_add(1, Relaxed);
        match event {
            Event::Init => {
                (kind.on_init)(&ctx);
                initial = Some(Vec::new());
            }
            Event::InitApply(obj) => {
                if let (Some(buf), Some(p)) = (initial.as_mut(), (kind.project)(&ctx, &obj)) {
                    buf.push(p);
                }
            }
            Event::InitDone => {
                let all = initial.take().unwrap_or_default();
                (kind.reset)(&mut ctx.learner.index(), all);
                ctx.learner.mark_changed();
                if !synced_once {
                    synced_once = true;
                    ctx.synced.send_modify(|s| s.push(kind.name));
                    tracing::debug!(kind = kind.name, "synced");
                }
            }
            Event::Apply(obj) => {
                if let Some(p) = (kind.project)(&ctx, &obj) {
                    (kind.apply)(&mut ctx.learner.index(), p);
                    ctx.learner.mark_changed();
                }
            }
            Event::Delete(obj) => {
                (kind.on_delete)(&ctx, obj.meta());
                (kind.delete)(&mut ctx.learner.index(), obj.meta());
                ctx.learner.mark_changed();
            }
        }
    }
}

fn track_sidecar(ctx: &Ctx, obj: &DynamicObject) {
    let (ns, name) = ns_name(&obj.metadata);
    let live = LiveSidecar::new(
        obj.metadata.labels.clone().unwrap_or_default(),
        obj.metadata.annotations.clone().unwrap_or_default(),
        obj.data.get("spec").unwrap_or(&Value::Null),
    );
    ctx.watched
        .sidecars()
        .insert((ns.to_string(), name.to_string()), live);
}

/// Watches one ConfigMap by name; `apply` sees it (None when absent or deleted).
async fn run_configmap(
    api: Api<ConfigMap>,
    name: &'static str,
    sync_name: &'static str,
    ctx: Arc<Ctx>,
    apply: fn(&Ctx, Option<&ConfigMap>),
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = kube::runtime::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen = false;
    let mut synced_once = false;
    while let Some(event) = stream.next().await {
        match event {
            Err(error) => {
                ctx.watched.watch_errors.fetch_add(1, Relaxed);
                tracing::warn!(kind = sync_name, %error, "watch failed; retrying with backoff");
            }
            Ok(Event::Init) => seen = false,
            Ok(Event::InitApply(cm)) | Ok(Event::Apply(cm)) => {
                seen = true;
                apply(&ctx, Some(&cm));
            }
            Ok(Event::Delete(_)) => apply(&ctx, None),
            Ok(Event::InitDone) => {
                if !seen {
                    apply(&ctx, None);
                }
                if !synced_once {
                    synced_once = true;
                    ctx.synced.send_modify(|s| s.push(sync_name));
                }
            }
        }
    }
}

/// The kill switch: `enabled: "false"` in the ConfigMap; absent = enabled.
fn apply_kill_switch(ctx: &Ctx, cm: Option<&ConfigMap>) {
    let disabled = cm
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get("enabled"))
        .map(|v| v.trim())
        == Some("false");
    if ctx.learner.index().set_kill_switch(disabled) {
        let what = if disabled {
            "ON: deleting every Sidecar we own"
        } else {
            "off"
        };
        tracing::warn!(disabled, "kill switch {what}");
        ctx.learner.mark_changed();
    }
}

/// Istio's mesh config (`data.mesh`): discoverySelectors and the mesh outbound policy.
/// A config that does not parse is logged and the last good one kept.
fn apply_mesh_config(ctx: &Ctx, cm: Option<&ConfigMap>) {
    let yaml = cm
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get("mesh"))
        .map_or("", String::as_str);
    match MeshConfig::parse(yaml) {
        Ok(mesh) => {
            tracing::info!(
                discovery_selectors = mesh.discovery_selectors.len(),
                outbound_policy = ?mesh.outbound_policy,
                "Istio mesh config"
            );
            ctx.learner.index().set_mesh_config(mesh);
            ctx.learner.mark_changed();
        }
        Err(error) => {
            ctx.watched.invalid_annotations.fetch_add(1, Relaxed);
            tracing::error!(%error, "Istio mesh config not understood; keeping the last one");
        }
    }
}

/// Starts every watcher; `synced` receives the kinds that completed their first list.
/// `namespace` is the controller's own (the kill-switch ConfigMap lives there).
pub fn spawn_all(
    client: Client,
    namespace: &str,
    learner: SharedLearner,
    watched: Arc<Watched>,
    synced: signal::Sender<Vec<&'static str>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ctx = Arc::new(Ctx {
        learner,
        watched,
        synced,
    });
    let mut tasks = vec![
        tokio::spawn(run_configmap(
            Api::namespaced(client.clone(), namespace),
            KILL_SWITCH_CONFIGMAP,
            "configmap",
            ctx.clone(),
            apply_kill_switch,
        )),
        tokio::spawn(run_configmap(
            Api::namespaced(client.clone(), ISTIO_NAMESPACE),
            MESH_CONFIGMAP,
            "meshconfig",
            ctx.clone(),
            apply_mesh_config,
        )),
    ];
    macro_rules! spawn {
        ($api:expr, $kind:expr) => {
            tasks.push(tokio::spawn(run_kind($api, $kind, ctx.clone())));
        };
    }
    spawn!(
        Api::<Namespace>::all(client.clone()),
        Kind {
            name: "namespaces",
            project: |c, o| Some(c.warn_invalid(project::namespace_entry(o))),
            apply: |i, p| i.apply_namespace(p),
            delete: |i, m| i.delete_namespace(m.name.as_deref().unwrap_or_default()),
            reset: |i, all| i.reset_namespaces(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<Pod>::all(client.clone()),
        Kind {
            name: "pods",
            project: |c, o| Some(c.warn_invalid(project::pod_entry(o))),
            apply: |i, p| i.apply_pod(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_pod(ns, n)
            },
            reset: |i, all| i.reset_pods(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<ReplicaSet>::all(client.clone()),
        Kind {
            name: "replicasets",
            project: |_, o| Some(project::replica_set_entry(o)),
            apply: |i, p| i.apply_replica_set(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_replica_set(ns, n)
            },
            reset: |i, all| i.reset_replica_sets(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<Job>::all(client.clone()),
        Kind {
            name: "jobs",
            project: |_, o| Some(project::job_entry(o)),
            apply: |i, p| i.apply_job(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_job(ns, n)
            },
            reset: |i, all| i.reset_jobs(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<Deployment>::all(client.clone()),
        Kind {
            name: "deployments",
            project: |c, o| Some(c.warn_invalid(project::deployment_entry(o))),
            apply: |i, p| i.apply_workload(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_workload(WorkloadKind::Deployment, ns, n)
            },
            reset: |i, all| i.reset_workloads(WorkloadKind::Deployment, all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<StatefulSet>::all(client.clone()),
        Kind {
            name: "statefulsets",
            project: |c, o| Some(c.warn_invalid(project::stateful_set_entry(o))),
            apply: |i, p| i.apply_workload(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_workload(WorkloadKind::StatefulSet, ns, n)
            },
            reset: |i, all| i.reset_workloads(WorkloadKind::StatefulSet, all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<DaemonSet>::all(client.clone()),
        Kind {
            name: "daemonsets",
            project: |c, o| Some(c.warn_invalid(project::daemon_set_entry(o))),
            apply: |i, p| i.apply_workload(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_workload(WorkloadKind::DaemonSet, ns, n)
            },
            reset: |i, all| i.reset_workloads(WorkloadKind::DaemonSet, all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<CronJob>::all(client.clone()),
        Kind {
            name: "cronjobs",
            project: |c, o| Some(c.warn_invalid(project::cron_job_entry(o))),
            apply: |i, p| i.apply_workload(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_workload(WorkloadKind::CronJob, ns, n)
            },
            reset: |i, all| i.reset_workloads(WorkloadKind::CronJob, all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    spawn!(
        Api::<Service>::all(client.clone()),
        Kind {
            name: "services",
            project: |_, o| Some(project::service_entry(o)),
            apply: |i, p| i.apply_service(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_service(ns, n)
            },
            reset: |i, all| i.reset_services(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    let se = istio_resource("ServiceEntry", "serviceentries");
    spawn!(
        Api::<DynamicObject>::all_with(client.clone(), &se),
        Kind {
            name: "serviceentries",
            project: |_, o| Some(project::istio_service_entry(o)),
            apply: |i, p| i.apply_service_entry(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_service_entry(ns, n)
            },
            reset: |i, all| i.reset_service_entries(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    let vs = istio_resource("VirtualService", "virtualservices");
    spawn!(
        Api::<DynamicObject>::all_with(client.clone(), &vs),
        Kind {
            name: "virtualservices",
            project: |_, o| Some(project::istio_virtual_service(o)),
            apply: |i, p| i.apply_virtual_service(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_virtual_service(ns, n)
            },
            reset: |i, all| i.reset_virtual_services(all),
            on_init: nothing,
            on_delete: nothing_deleted,
        }
    );
    let sc = istio_resource("Sidecar", "sidecars");
    spawn!(
        Api::<DynamicObject>::all_with(client, &sc),
        Kind {
            name: "sidecars",
            project: |c, o| {
                track_sidecar(c, o);
                match project::istio_sidecar(o) {
                    Ok(s) => Some(s),
                    Err(error) => {
                        c.watched.invalid_annotations.fetch_add(1, Relaxed);
                        tracing::warn!(%error, "Sidecar skipped");
                        None
                    }
                }
            },
            apply: |i, p| i.apply_sidecar(p),
            delete: |i, m| {
                let (ns, n) = ns_name(m);
                i.delete_sidecar(ns, n)
            },
            reset: |i, all| i.reset_sidecars(all),
            on_init: |c| c.watched.sidecars().clear(),
            on_delete: |c, m| {
                let (ns, n) = ns_name(m);
                c.watched
                    .sidecars()
                    .remove(&(ns.to_string(), n.to_string()));
            },
        }
    );
    tasks
}
