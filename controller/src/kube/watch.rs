//! Watchers: one kube-runtime watcher per kind, each event projected into the index at
//! once (no object store). A watch reports its kind as synced after its first complete
//! list; the writer waits for every watch [`spawn_all`] started, so the first write
//! sees the restored state.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use lazyxds_index::index::Projection;
use lazyxds_index::{MeshConfig, WorkloadKind};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch as signal;

use super::project::{self, Projected};
use super::{authorization_policy_resource, envoy_filter_resource, istio_resource};
use crate::learn::SharedLearner;
use crate::ready::WatchHealth;

pub use lazyxds_index::objects::{KILL_SWITCH_CONFIGMAP, MESH_CONFIGMAP, MESH_CONFIG_NAMESPACE};

/// Whether an object with these labels is ours to write (`is_ours`, `is_our_catch_all`).
pub type IsOurs = fn(&BTreeMap<String, String>) -> bool;

/// A value the writer compares (a label, an annotation, a spec as compact JSON): its text,
/// or, unless diffs are wanted (dry-run, the writer's debug log), a 128-bit digest of it.
/// The deps annotation and the spec are most of what the writer keeps of each of 20k
/// Sidecars and 20k EnvoyFilters at 100k pods (bench P7); their digests are 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    Text(Box<str>),
    Digest(u128),
}

impl Kept {
    pub fn new(text: &str, keep_text: bool) -> Self {
        if keep_text {
            Kept::Text(text.into())
        } else {
            Kept::Digest(digest(text))
        }
    }

    /// Whether `text` is the value kept.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Kept::Text(kept) => **kept == *text,
            Kept::Digest(kept) => *kept == digest(text),
        }
    }

    /// The text, when kept.
    pub fn text(&self) -> Option<&str> {
        match self {
            Kept::Text(kept) => Some(kept),
            Kept::Digest(_) => None,
        }
    }
}

/// Two 64-bit hashes of different families (FNV-1a, SipHash-1-3): equal texts give equal
/// digests; different ones practically never do. Only compared within the process.
fn digest(text: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut sip = std::hash::DefaultHasher::new();
    text.hash(&mut sip);
    (u128::from(lazyxds_index::host::fnv1a64(text.as_bytes())) << 64) | u128::from(sip.finish())
}

/// Labels or annotations kept for the writer's compare, compact: sorted (key, value) pairs
/// in one boxed slice. A `BTreeMap<String, String>` allocates an 11-entry leaf (~540 B)
/// for even one pair, and the writer keeps two maps for each of 20k Sidecars and 20k
/// EnvoyFilters at 100k pods (bench P7).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StringPairs(Box<[(Box<str>, Kept)]>);

impl StringPairs {
    /// Sorted by key (a `BTreeMap` iterates in key order) for `get`.
    pub fn new(map: BTreeMap<String, String>, keep_text: bool) -> Self {
        StringPairs(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), Kept::new(&v, keep_text)))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&Kept> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets `key` (tests: a foreign label or annotation added in the cluster).
    #[cfg(test)]
    pub fn insert(&mut self, key: String, value: String) {
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        let value = Kept::Text(value.into_boxed_str());
        match pairs.binary_search_by(|(k, _)| (**k).cmp(&*key)) {
            Ok(i) => pairs[i].1 = value,
            Err(i) => pairs.insert(i, (key.into_boxed_str(), value)),
        }
        self.0 = pairs.into_boxed_slice();
    }
}

/// A Sidecar or EnvoyFilter as seen in the cluster, for the writer's compare. Compact: the
/// spec is kept as its JSON text or its digest ([`Kept`]), and an object that is not ours
/// keeps nothing but that fact.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveObject {
    /// Ours to write: a Sidecar carrying `app.kubernetes.io/managed-by: lazyxds`, an
    /// EnvoyFilter that is also a per-workload catch-all (`is_our_catch_all`).
    pub ours: bool,
    pub labels: StringPairs,
    pub annotations: StringPairs,
    /// `spec` as compact JSON (`serde_json::to_string`: keys sorted, so equal specs give
    /// equal text), or its digest; empty when not ours.
    pub spec: Kept,
}

impl LiveObject {
    /// Ours (by its labels, `is_ours` for the kind): keeps what the writer compares, as
    /// text when `keep_text`; else only that it is not ours.
    pub fn new(
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        spec: &Value,
        is_ours: IsOurs,
        keep_text: bool,
    ) -> Self {
        let ours = is_ours(&labels);
        if !ours {
            return LiveObject {
                ours,
                labels: StringPairs::default(),
                annotations: StringPairs::default(),
                spec: Kept::Text(Box::default()),
            };
        }
        LiveObject {
            ours,
            labels: StringPairs::new(labels, keep_text),
            annotations: StringPairs::new(annotations, keep_text),
            spec: Kept::new(&spec_text(spec), keep_text),
        }
    }

    /// The spec, parsed (`Null` when only its digest is kept, or nothing).
    pub fn spec(&self) -> Value {
        self.spec
            .text()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null)
    }
}

/// A spec's text as [`LiveObject::spec`] keeps it.
pub fn spec_text(spec: &Value) -> String {
    if spec.is_null() {
        return String::new();
    }
    spec.to_string()
}

/// State the watchers share with the writer and the HTTP server.
#[derive(Debug, Default)]
pub struct Watched {
    /// Keep the live objects' values as text, for diffs ([`Kept`]).
    pub keep_text: bool,
    /// Every Sidecar in the cluster by (namespace, name).
    pub sidecars: Mutex<BTreeMap<(String, String), LiveObject>>,
    /// Every EnvoyFilter in the cluster by (namespace, name); ours are the per-workload
    /// catch-alls (a name taken by any other is never written).
    pub catch_alls: Mutex<BTreeMap<(String, String), LiveObject>>,
    pub invalid_annotations: AtomicU64,
    pub watch_errors: AtomicU64,
    pub events: AtomicU64,
    /// Whether the watches reach the API server (for `/readyz`).
    pub health: WatchHealth,
    /// Fresh lists asked of every index watch (a generation): the removal guard believes
    /// a mass removal only once lists made after it was first seen agree.
    pub relist: tokio::sync::watch::Sender<u64>,
    /// The relist generation of each index watch's last complete list.
    listed: Mutex<BTreeMap<&'static str, u64>>,
    /// While the Sidecars are listed afresh, the keys seen so far: the live map keeps
    /// every Sidecar until the list is complete (a pass meanwhile must not think ours
    /// are gone), then drops those not seen.
    relisting_sidecars: Mutex<Option<std::collections::BTreeSet<(String, String)>>>,
}

impl Watched {
    /// `keep_text`: see [`Kept`].
    pub fn new(keep_text: bool) -> Self {
        Watched {
            keep_text,
            ..Watched::default()
        }
    }

    /// Asks every index watch for a fresh list; the generation to wait for.
    pub fn ask_relist(&self) -> u64 {
        let mut next = 0;
        self.relist.send_modify(|g| {
            *g = g.saturating_add(1);
            next = *g;
        });
        next
    }

    /// The oldest relist generation among the index watches' last complete lists.
    pub fn listed_generation(&self) -> u64 {
        let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        listed.values().copied().min().unwrap_or(0)
    }

    fn relisting_sidecars(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<std::collections::BTreeSet<(String, String)>>> {
        self.relisting_sidecars
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record_list(&self, kind: &'static str, generation: u64) {
        self.listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind, generation);
    }

    pub fn sidecars(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), LiveObject>> {
        self.sidecars.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn catch_alls(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), LiveObject>> {
        self.catch_alls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

/// How one Kubernetes kind becomes index entries; applying, deleting and resetting them
/// is the index's [`Projection`].
struct Kind<K, P: Projection> {
    name: &'static str,
    scope: P::Scope,
    /// `None`: skipped (a warning was logged).
    project: fn(&Ctx, &K) -> Option<P>,
    /// Keep [`Watched::sidecars`] (the writer plans against it).
    live_sidecars: bool,
}

fn kind<K, P: Projection>(
    name: &'static str,
    scope: P::Scope,
    project: fn(&Ctx, &K) -> Option<P>,
) -> Kind<K, P> {
    Kind {
        name,
        scope,
        project,
        live_sidecars: false,
    }
}

fn ns_name(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

async fn run_kind<K, P>(api: Api<K>, kind: Kind<K, P>, ctx: Arc<Ctx>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    P: Projection,
{
    let mut initial: Option<Vec<P>> = None;
    let mut synced_once = false;
    let mut relist = ctx.watched.relist.subscribe();
    // A new watcher stream lists afresh: how a relist asked by the writer happens.
    loop {
        let generation = *relist.borrow_and_update();
        let stream =
            kube::runtime::watcher(api.clone(), watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let event = tokio::select! {
                event = stream.next() => match event {
                    Some(event) => event,
                    None => return,
                },
                Ok(()) = relist.changed() => break,
            };
            if handle_event(&kind, &ctx, event, &mut initial, &mut synced_once) {
                ctx.watched.record_list(kind.name, generation);
            }
        }
    }
}

/// One watch event of an index kind into the index; true when a complete list was just
/// applied.
fn handle_event<K, P>(
    kind: &Kind<K, P>,
    ctx: &Ctx,
    event: Result<Event<K>, watcher::Error>,
    initial: &mut Option<Vec<P>>,
    synced_once: &mut bool,
) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    P: Projection,
{
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            ctx.watched.watch_errors.fetch_add(1, Relaxed);
            ctx.watched.health.error(kind.name, &error);
            tracing::warn!(kind = kind.name, %error, "watch failed; retrying with backoff");
            return false;
        }
    };
    ctx.watched.events.fetch_add(1, Relaxed);
    ctx.watched.health.event();
    match event {
        Event::Init => {
            if kind.live_sidecars {
                *ctx.watched.relisting_sidecars() = Some(Default::default());
            }
            *initial = Some(Vec::new());
        }
        Event::InitApply(obj) => {
            if let (Some(buf), Some(p)) = (initial.as_mut(), (kind.project)(ctx, &obj)) {
                buf.push(p);
            }
        }
        Event::InitDone => {
            if kind.live_sidecars {
                if let Some(seen) = ctx.watched.relisting_sidecars().take() {
                    ctx.watched.sidecars().retain(|key, _| seen.contains(key));
                }
            }
            let all = initial.take().unwrap_or_default();
            ctx.learner.index().reset(kind.scope, all);
            ctx.learner.mark_changed();
            if !*synced_once {
                *synced_once = true;
                ctx.synced.send_modify(|s| s.push(kind.name));
                tracing::debug!(kind = kind.name, "synced");
            }
            return true;
        }
        Event::Apply(obj) => {
            if let Some(p) = (kind.project)(ctx, &obj) {
                ctx.learner.index().apply(p);
                ctx.learner.mark_changed();
            }
        }
        Event::Delete(obj) => {
            let (ns, name) = ns_name(obj.meta());
            if kind.live_sidecars {
                ctx.watched
                    .sidecars()
                    .remove(&(ns.to_string(), name.to_string()));
            }
            ctx.learner.index().delete::<P>(kind.scope, ns, name);
            ctx.learner.mark_changed();
        }
    }
    false
}

fn live_object(obj: &DynamicObject, is_ours: IsOurs, keep_text: bool) -> LiveObject {
    LiveObject::new(
        obj.metadata.labels.clone().unwrap_or_default(),
        obj.metadata.annotations.clone().unwrap_or_default(),
        obj.data.get("spec").unwrap_or(&Value::Null),
        is_ours,
        keep_text,
    )
}

fn track_sidecar(ctx: &Ctx, obj: &DynamicObject) {
    let (ns, name) = ns_name(&obj.metadata);
    let key = (ns.to_string(), name.to_string());
    if let Some(seen) = ctx.watched.relisting_sidecars().as_mut() {
        seen.insert(key.clone());
    }
    let live = live_object(obj, lazyxds_index::objects::is_ours, ctx.watched.keep_text);
    ctx.watched.sidecars().insert(key, live);
}

/// A Sidecar: every one is tracked live for the writer's plan; the index gets those that
/// parse.
fn sidecar(ctx: &Ctx, obj: &DynamicObject) -> Option<lazyxds_index::SidecarObject> {
    track_sidecar(ctx, obj);
    match project::istio_sidecar(obj) {
        Ok(s) => Some(s),
        Err(error) => {
            ctx.watched.invalid_annotations.fetch_add(1, Relaxed);
            tracing::warn!(%error, "Sidecar skipped");
            None
        }
    }
}

/// Watches every EnvoyFilter into [`Watched::catch_alls`] (nothing goes to the index: the
/// writer plans our per-workload catch-alls against them). A change is a change for the
/// writer, so a catch-all deleted or edited by hand is put back.
async fn run_catch_alls(api: Api<DynamicObject>, ctx: Arc<Ctx>) {
    const NAME: &str = "envoyfilters";
    let stream = kube::runtime::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut initial: Option<BTreeMap<(String, String), LiveObject>> = None;
    let mut synced_once = false;
    let key = |obj: &DynamicObject| {
        let (ns, name) = ns_name(&obj.metadata);
        (ns.to_string(), name.to_string())
    };
    let ours = lazyxds_index::objects::is_our_catch_all;
    let keep_text = ctx.watched.keep_text;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                ctx.watched.watch_errors.fetch_add(1, Relaxed);
                tracing::warn!(kind = NAME, %error, "watch failed; retrying with backoff");
                continue;
            }
        };
        ctx.watched.events.fetch_add(1, Relaxed);
        match event {
            Event::Init => initial = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                if let Some(buf) = initial.as_mut() {
                    buf.insert(key(&obj), live_object(&obj, ours, keep_text));
                }
            }
            Event::InitDone => {
                *ctx.watched.catch_alls() = initial.take().unwrap_or_default();
                ctx.learner.mark_changed();
                if !synced_once {
                    synced_once = true;
                    ctx.synced.send_modify(|s| s.push(NAME));
                }
            }
            Event::Apply(obj) => {
                ctx.watched
                    .catch_alls()
                    .insert(key(&obj), live_object(&obj, ours, keep_text));
                ctx.learner.mark_changed();
            }
            Event::Delete(obj) => {
                ctx.watched.catch_alls().remove(&key(&obj));
                ctx.learner.mark_changed();
            }
        }
    }
}

/// An AuthorizationPolicy; one Istio would ignore (an unknown action) is skipped.
fn authorization_policy(
    ctx: &Ctx,
    obj: &DynamicObject,
) -> Option<lazyxds_index::AuthorizationPolicy> {
    match project::istio_authorization_policy(obj) {
        Ok(p) => Some(p),
        Err(error) => {
            ctx.watched.invalid_annotations.fetch_add(1, Relaxed);
            tracing::warn!(%error, "AuthorizationPolicy skipped");
            None
        }
    }
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
                ctx.watched.health.error(sync_name, &error);
                tracing::warn!(kind = sync_name, %error, "watch failed; retrying with backoff");
            }
            Ok(Event::Init) => {
                ctx.watched.health.event();
                seen = false;
            }
            Ok(Event::InitApply(cm)) | Ok(Event::Apply(cm)) => {
                ctx.watched.health.event();
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
            Api::namespaced(client.clone(), MESH_CONFIG_NAMESPACE),
            MESH_CONFIGMAP,
            "meshconfig",
            ctx.clone(),
            apply_mesh_config,
        )),
    ];
    use project::*;
    use tokio::spawn as run;
    use WorkloadKind::{
        CronJob as Cron, DaemonSet as Ds, Deployment as Deploy, StatefulSet as Sts,
    };
    let istio =
        |k, plural| Api::<DynamicObject>::all_with(client.clone(), &istio_resource(k, plural));
    let c = &ctx;
    tasks.extend([
        run(run_kind(
            Api::all(client.clone()),
            kind("namespaces", (), |c, o| {
                Some(c.warn_invalid(namespace_entry(o)))
            }),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("pods", (), |c, o| Some(c.warn_invalid(pod_entry(o)))),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("replicasets", (), |_, o| Some(replica_set_entry(o))),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("jobs", (), |_, o| Some(job_entry(o))),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("deployments", Deploy, |c, o| {
                Some(c.warn_invalid(deployment_entry(o)))
            }),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("statefulsets", Sts, |c, o| {
                Some(c.warn_invalid(stateful_set_entry(o)))
            }),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("daemonsets", Ds, |c, o| {
                Some(c.warn_invalid(daemon_set_entry(o)))
            }),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("cronjobs", Cron, |c, o| {
                Some(c.warn_invalid(cron_job_entry(o)))
            }),
            c.clone(),
        )),
        run(run_kind(
            Api::all(client.clone()),
            kind("services", (), |_, o| Some(service_entry(o))),
            c.clone(),
        )),
        run(run_kind(
            istio("ServiceEntry", "serviceentries"),
            kind("serviceentries", (), |_, o| Some(istio_service_entry(o))),
            c.clone(),
        )),
        run(run_kind(
            istio("VirtualService", "virtualservices"),
            kind("virtualservices", (), |_, o| Some(istio_virtual_service(o))),
            c.clone(),
        )),
        run(run_kind(
            istio("DestinationRule", "destinationrules"),
            kind("destinationrules", (), |_, o| {
                Some(istio_destination_rule(o))
            }),
            c.clone(),
        )),
        run(run_kind(
            Api::<DynamicObject>::all_with(client.clone(), &authorization_policy_resource()),
            kind("authorizationpolicies", (), authorization_policy),
            c.clone(),
        )),
        run(run_kind(
            istio("Sidecar", "sidecars"),
            Kind {
                live_sidecars: true,
                ..kind("sidecars", (), sidecar)
            },
            c.clone(),
        )),
        run(run_catch_alls(
            Api::all_with(client.clone(), &envoy_filter_resource()),
            c.clone(),
        )),
    ]);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_pairs_find_every_key_and_only_those() {
        let map: BTreeMap<String, String> = [("b", "2"), ("a", "1"), ("lazyxds.io/deps", "{}")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for keep_text in [true, false] {
            let pairs = StringPairs::new(map.clone(), keep_text);
            for (k, v) in &map {
                assert!(pairs.get(k).is_some_and(|kept| kept.matches(v)), "{k}");
                assert!(!pairs.get(k).is_some_and(|kept| kept.matches("x")), "{k}");
                assert_eq!(pairs.get(k).and_then(Kept::text).is_some(), keep_text);
            }
            for missing in ["", "c", "A", "lazyxds.io"] {
                assert_eq!(pairs.get(missing), None, "{missing}");
            }
        }
        assert_eq!(StringPairs::default().get("a"), None);
        // Inserting keeps the slice sorted: every key is still found.
        let mut pairs = StringPairs::new(map, true);
        pairs.insert("aa".into(), "3".into());
        pairs.insert("b".into(), "4".into());
        for (k, v) in [
            ("a", "1"),
            ("aa", "3"),
            ("b", "4"),
            ("lazyxds.io/deps", "{}"),
        ] {
            assert_eq!(pairs.get(k).and_then(Kept::text), Some(v), "{k}");
        }
    }

    /// A digest matches exactly the text it was made of.
    #[test]
    fn a_digest_matches_its_text_and_no_other() {
        let texts = [
            "",
            "{}",
            r#"{"egress":[{"hosts":["istio-system/*"]}]}"#,
            r#"{"egress":[{"hosts":["istio-system/*","shop/api"]}]}"#,
            r#"{"api.shop.svc.cluster.local":1796399356}"#,
            r#"{"api.shop.svc.cluster.local":1796399357}"#,
        ];
        for (i, a) in texts.iter().enumerate() {
            let kept = Kept::new(a, false);
            assert_eq!(kept, Kept::new(a, false), "{a}");
            for (j, b) in texts.iter().enumerate() {
                assert_eq!(kept.matches(b), i == j, "{a} ~ {b}");
                assert_eq!(Kept::new(a, true).matches(b), i == j, "{a} ~ {b}");
            }
        }
    }
}
