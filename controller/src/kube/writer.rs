//! The Sidecar writer: the only code that changes the cluster.
//!
//! Compute, then act: [`plan`] (pure) compares the desired Sidecars and their catch-all
//! EnvoyFilters with the live ones the watchers saw; [`KubeTarget`] applies the plan with
//! server-side apply under one field manager, deletes what we own and no longer need, and
//! never touches an object without our label. A workload's EnvoyFilter is written before
//! its Sidecar and deleted after it, and a Sidecar is not written while its EnvoyFilter is
//! missing: a scoped workload's unknown HTTP always has the gateway to go to. Debounced (a burst of changes is one pass), rate-limited, every call under
//! a timeout, failed objects retried with backoff — never a hot loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use lazyxds_index::objects::{is_our_catch_all, is_ours, string_map, ANNOTATION_WORKLOAD};
use lazyxds_index::topology::Removal;
use lazyxds_index::{Desired, JsonText, Pass, RenderConfig, WorkloadId, WorkloadKind};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch as signal;

use super::watch::{spawn_all, spec_text, IsOurs, LiveObject, StringPairs, Watched};
use super::KubeStatus;
use super::{envoy_filter_resource, istio_resource, FIELD_MANAGER};
use crate::learn::SharedLearner;
use crate::ready::WritePath;
use crate::target::Target;

/// What the writer writes: a workload's Sidecar and its catch-all EnvoyFilter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Sidecar,
    EnvoyFilter,
}

impl Kind {
    fn resource(self) -> kube::api::ApiResource {
        match self {
            Kind::Sidecar => istio_resource("Sidecar", "sidecars"),
            Kind::EnvoyFilter => envoy_filter_resource(),
        }
    }
}

/// One change the writer would make.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// Lines removed (`-`) and added (`+`), YAML; empty for a delete, and unless the plan
    /// was made with diffs ([`plan`]: dry-run, the only reader). (The object to apply is
    /// parsed again from the pass when it is written, [`body_of`]: a plan may hold every
    /// Sidecar of the mesh, and the pass holds them already.)
    pub diff: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// What one pass would do, and what it refuses.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// In order: EnvoyFilters created or updated, then Sidecars created or updated, then
    /// Sidecars deleted, then EnvoyFilters deleted.
    pub changes: Vec<Change>,
    /// `ns/name` of workloads left as they are: the Sidecar's or the EnvoyFilter's name
    /// is taken by an object we do not own.
    pub blocked: Vec<String>,
    /// `ns/name` of Sidecars whose delete is held: the pass would remove too many at once
    /// ([`RemovalGuard`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals_held: Vec<String>,
}

/// Up to this many Sidecar deletes in one pass are never held: an opt-out, a small mesh.
pub const REMOVALS_NEVER_HELD: usize = 5;
/// How long a mass removal is held before it is believed (`--removal-confirm-secs`).
pub const DEFAULT_REMOVAL_CONFIRM: Duration = Duration::from_secs(120);

/// Holds a pass that would delete more than a share of our Sidecars at once — what a
/// truncated relist or a glitch in a watched setting (namespaces, the mesh config) looks
/// like — until it has stood for the confirm window. A deleted Sidecar takes its learned
/// deps with it across a restart; a held delete only keeps a workload scoped a little
/// longer. The kill switch is never held.
#[derive(Debug, Clone)]
pub struct RemovalGuard {
    /// More than this share of our live Sidecars (100: never held).
    pub max_percent: u8,
    pub confirm: Duration,
    /// Since when every pass has wanted a mass removal, and the relist generation asked
    /// then: only lists made after it may confirm it.
    since: Option<(Instant, u64)>,
}

/// What the guard did with a pass's deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// Not a mass removal (or the kill switch): deletes go ahead.
    Pass,
    /// A mass removal, held (its deletes taken out of the plan) for `left` more and
    /// until fresh lists agree; `relist`: the generation to ask the watches for (once).
    Held {
        removal: Removal,
        left: Duration,
        relist: Option<u64>,
    },
    /// A mass removal that stood for the whole window, through fresh lists: deletes go
    /// ahead.
    Confirmed(Removal),
}

impl RemovalGuard {
    pub fn new(max_percent: u8, confirm: Duration) -> Self {
        RemovalGuard {
            max_percent,
            confirm,
            since: None,
        }
    }

    /// Takes the deletes out of `plan` (Sidecars into `removals_held`, their
    /// EnvoyFilters with them) while they are a mass removal of the `live_ours` Sidecars
    /// we have that is younger than the window or not yet seen by lists of a relist
    /// generation after `requested` (`listed`: the oldest the watches have completed).
    pub fn check(
        &mut self,
        plan: &mut Plan,
        (live_ours, killed): (usize, bool),
        (requested, listed): (u64, u64),
        now: Instant,
    ) -> Guarded {
        let removed = plan
            .changes
            .iter()
            .filter(|c| c.kind == Kind::Sidecar && c.action == Action::Delete)
            .count();
        let removal = Removal {
            before: live_ours,
            removed,
        };
        if killed || removed <= REMOVALS_NEVER_HELD || !removal.exceeds(self.max_percent) {
            self.since = None;
            return Guarded::Pass;
        }
        let first = self.since.is_none();
        let (since, generation) = *self.since.get_or_insert((now, requested.saturating_add(1)));
        let held_for = now.saturating_duration_since(since);
        if held_for >= self.confirm && listed >= generation {
            return Guarded::Confirmed(removal);
        }
        let (deletes, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.changes)
            .into_iter()
            .partition(|c| c.action == Action::Delete);
        plan.changes = keep;
        plan.removals_held = deletes
            .iter()
            .filter(|c| c.kind == Kind::Sidecar)
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect();
        Guarded::Held {
            removal,
            left: self.confirm.saturating_sub(held_for),
            relist: first.then_some(generation),
        }
    }
}

fn yaml_lines(v: &Value) -> Vec<String> {
    if v.is_null() {
        return Vec::new();
    }
    serde_norway::to_string(v)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Removed and added lines, in order (enough to read a Sidecar change).
fn diff(old: &Value, new: &Value) -> Vec<String> {
    let (old, new) = (yaml_lines(old), yaml_lines(new));
    let mut out: Vec<String> = old
        .iter()
        .filter(|l| !new.contains(l))
        .map(|l| format!("-{l}"))
        .collect();
    out.extend(
        new.iter()
            .filter(|l| !old.contains(l))
            .map(|l| format!("+{l}")),
    );
    out
}

/// Whether the live Sidecar's labels and annotations we set, and its spec, are as desired.
fn up_to_date(live: &LiveObject, desired: &Value) -> bool {
    let subset = |live: &StringPairs, want: &Value| -> bool {
        want.as_object().is_none_or(|m| {
            m.iter().all(|(k, v)| match (live.get(k), v.as_str()) {
                (Some(kept), Some(want)) => kept.matches(want),
                (kept, want) => kept.is_none() && want.is_none(),
            })
        })
    };
    subset(&live.labels, &desired["metadata"]["labels"])
        && subset(&live.annotations, &desired["metadata"]["annotations"])
        && live.spec.matches(&spec_text(&desired["spec"]))
}

/// The parts of a live Sidecar we manage, shaped like the desired object, for the diff
/// (values kept only as digests show as absent).
fn managed_view(live: &LiveObject, desired: &Value) -> Value {
    let pick = |live: &StringPairs, want: &Value| -> Value {
        let keys = want
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        Value::Object(
            keys.into_iter()
                .filter_map(|k| {
                    let text = live.get(&k)?.text()?;
                    Some((k.clone(), Value::String(text.to_string())))
                })
                .collect(),
        )
    };
    let mut view = desired.clone();
    view["metadata"]["labels"] = pick(&live.labels, &desired["metadata"]["labels"]);
    view["metadata"]["annotations"] = pick(&live.annotations, &desired["metadata"]["annotations"]);
    view["spec"] = live.spec();
    view
}

/// The live objects of the kinds the writer writes, by (namespace, name).
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    pub sidecars: &'a BTreeMap<(String, String), LiveObject>,
    pub catch_alls: &'a BTreeMap<(String, String), LiveObject>,
}

/// The change that makes `live` equal `body`, if any, with its diff if `with_diff`; Err
/// when the name is taken by an object we do not own.
fn change_to(
    kind: Kind,
    key: &(String, String),
    body: &Value,
    live: Option<&LiveObject>,
    with_diff: bool,
) -> Result<Option<Change>, ()> {
    let action = match live {
        None => Action::Create,
        Some(l) if !l.ours => return Err(()),
        Some(l) if up_to_date(l, body) => return Ok(None),
        Some(_) => Action::Update,
    };
    let diff = match (with_diff, live) {
        (false, _) => Vec::new(),
        (true, None) => diff(&Value::Null, body),
        (true, Some(l)) => diff(&managed_view(l, body), body),
    };
    Ok(Some(Change {
        kind,
        namespace: key.0.clone(),
        name: key.1.clone(),
        action,
        diff,
    }))
}

fn delete(kind: Kind, (namespace, name): &(String, String)) -> Change {
    Change {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
        action: Action::Delete,
        diff: Vec::new(),
    }
}

/// The changes that make the live Sidecars and catch-all EnvoyFilters equal the desired
/// ones. A workload whose EnvoyFilter or Sidecar name is taken by an object we do not own
/// is blocked: neither of its objects is written. Diffs only `with_diffs`: at 20k
/// workloads they are ~50 MB at the peak of a pass, and only a dry-run (or the writer's
/// debug log) reads them.
pub fn plan(desired: &Desired, live: Live<'_>, with_diffs: bool) -> Plan {
    let mut plan = Plan::default();
    // Filters first, then Sidecars (never a Sidecar without its catch-all): the filters
    // go straight into `changes`, sized for both, so a pass that changes every workload
    // (a restart, the first edges) does not grow and copy it while its objects are held.
    let mut filters = Vec::with_capacity(desired.sidecars.len().saturating_mul(2));
    let mut sidecars = Vec::new();
    for (key, sidecar) in &desired.sidecars {
        // One workload's objects parsed at a time. A `null` body (never: see
        // `lazyxds_index::desired`) or a missing filter is skipped, never deleted.
        let filter = desired.catch_alls.get(key).map(JsonText::value);
        let (sidecar, Some(filter)) = (sidecar.value(), filter) else {
            continue;
        };
        if sidecar.is_null() || filter.is_null() {
            continue;
        }
        let change = |kind, body, live| change_to(kind, key, body, live, with_diffs);
        let filter = change(Kind::EnvoyFilter, &filter, live.catch_alls.get(key));
        let sidecar = change(Kind::Sidecar, &sidecar, live.sidecars.get(key));
        match (filter, sidecar) {
            (Ok(filter), Ok(sidecar)) => {
                filters.extend(filter);
                sidecars.extend(sidecar);
            }
            _ => plan.blocked.push(format!("{}/{}", key.0, key.1)),
        }
    }
    plan.changes = filters;
    plan.changes.append(&mut sidecars);
    let stale = |kind: Kind, map: &BTreeMap<(String, String), LiveObject>| -> Vec<Change> {
        map.iter()
            .filter(|(key, l)| l.ours && !desired.sidecars.contains_key(*key))
            .map(|(key, _)| delete(kind, key))
            .collect()
    };
    plan.changes.extend(stale(Kind::Sidecar, live.sidecars));
    plan.changes
        .extend(stale(Kind::EnvoyFilter, live.catch_alls));
    // The plan is kept until the next pass (`/debug/plan`): not its unused room.
    plan.changes.shrink_to_fit();
    plan
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub render: RenderConfig,
    /// Writes per second at most.
    pub max_writes_per_sec: u32,
    /// Per API call.
    pub timeout: Duration,
    /// Compute and publish the plan; write nothing.
    pub dry_run: bool,
    /// Mass removals held ([`RemovalGuard`]): above this share of our Sidecars...
    pub max_removal_percent: u8,
    /// ...for this long.
    pub removal_confirm: Duration,
}

/// Writer metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub passes: AtomicU64,
    pub applies: AtomicU64,
    pub deletes: AtomicU64,
    pub blocked: AtomicU64,
    /// Scoped workloads at the host cap after the last pass (a gauge).
    pub capped: AtomicU64,
    /// Sidecar deletes held by the removal guard after the last pass (a gauge).
    pub removals_held: AtomicU64,
    pub last_pass_ms: AtomicU64,
    /// Every watch has listed once (the writer may start).
    pub synced: std::sync::atomic::AtomicBool,
    /// Whether the last pass's writes got through (for `/readyz`).
    pub writes: WritePath,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Shared with the writer's own last plan: one copy of it in memory.
    plan: Mutex<Arc<Plan>>,
}

impl WriterStats {
    fn error(&self, reason: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last plan computed (all of it in dry-run; what was left to do otherwise).
    pub fn plan(&self) -> Arc<Plan> {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn reason(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => match status.code {
            409 => "conflict".into(),
            429 => "throttled".into(),
            500..=599 => format!("server_{}", status.code),
            code => format!("http_{code}"),
        },
        _ => "transport".into(),
    }
}

/// The cluster as a [`Target`]: plans against the Sidecars the watch saw, applies with
/// server-side apply (spaced to the rate limit, none while the kill switch is on),
/// keeps the gateway's routes, publishes Events, or in dry-run only keeps the plan.
pub struct KubeTarget {
    client: Client,
    config: WriterConfig,
    learner: SharedLearner,
    watched: Arc<Watched>,
    synced: signal::Receiver<Vec<&'static str>>,
    /// Whether this replica leads (checked again before every write).
    leader: signal::Receiver<bool>,
    /// Kubernetes Events on workloads (scoped, refused); None in dry-run.
    recorder: Option<EventPublisher>,
    stats: Arc<WriterStats>,
    /// The watch tasks feeding the index: they end with the target.
    watches: Vec<tokio::task::JoinHandle<()>>,
    min_gap: Duration,
    removal_guard: RemovalGuard,
    /// When a held mass removal is looked at again (nothing else may wake the loop).
    recheck_at: Option<Instant>,
    last_plan: Arc<Plan>,
    evented: BTreeMap<WorkloadId, String>,
    routing: super::routing::RoutingState,
}

impl Drop for KubeTarget {
    fn drop(&mut self) {
        for task in &self.watches {
            task.abort();
        }
    }
}

/// Starts the watchers (`namespace` is the controller's: the kill-switch ConfigMap);
/// returns the status view and the target the loop ([`crate::target::run`]) drives.
/// `leader` says when this replica may write ([`super::leader::always`] without
/// election); `pod_name` signs its Events.
pub fn start(
    client: Client,
    (namespace, pod_name): (&str, &str),
    learner: SharedLearner,
    leader: signal::Receiver<bool>,
    config: WriterConfig,
) -> (KubeStatus, KubeTarget) {
    // Live values as text only where diffs are read: a dry-run's log, the debug log.
    let watched = Arc::new(Watched::new(
        config.dry_run || tracing::enabled!(tracing::Level::DEBUG),
    ));
    let stats = Arc::new(WriterStats::default());
    let (synced_tx, synced) = signal::channel(Vec::new());
    let watches = spawn_all(
        client.clone(),
        namespace,
        learner.clone(),
        watched.clone(),
        synced_tx,
    );
    let status = KubeStatus {
        writer: stats.clone(),
        watched: watched.clone(),
        learner: learner.clone(),
        render: config.render.clone(),
    };
    let target = KubeTarget {
        recorder: (!config.dry_run).then(|| EventPublisher {
            client: client.clone(),
            instance: pod_name.to_string(),
        }),
        min_gap: Duration::from_secs(1) / config.max_writes_per_sec.max(1),
        removal_guard: RemovalGuard::new(config.max_removal_percent, config.removal_confirm),
        recheck_at: None,
        client,
        config,
        learner,
        watched,
        synced,
        leader,
        stats,
        watches,
        last_plan: Arc::new(Plan::default()),
        evented: BTreeMap::new(),
        routing: super::routing::RoutingState::default(),
    };
    (status, target)
}

impl Target for KubeTarget {
    /// A held mass removal's window ending is a change.
    async fn changed(&mut self) {
        match self.recheck_at {
            Some(at) => {
                tokio::time::sleep_until(at.into()).await;
                self.recheck_at = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Waits for every watcher's initial list, so our existing Sidecars (and their
    /// learned deps) are known before any write: a restart never shrinks a Sidecar.
    async fn ready(&mut self) {
        let _ = self
            .synced
            .wait_for(|synced| synced.len() >= self.watches.len())
            .await;
        self.stats.synced.store(true, Relaxed);
        let forgotten = self.learner.index().forget_absent_workloads();
        tracing::info!(
            forgotten,
            dry_run = self.config.dry_run,
            "watches synced; writer starts"
        );
    }

    fn render_config(&self) -> RenderConfig {
        self.config.render.clone()
    }

    async fn apply(&mut self, pass: &Pass) -> bool {
        let started = Instant::now();
        let (watched, leader, stats) = (&self.watched, &self.leader, &self.stats);
        let (mut plan, live_ours) = {
            let (sidecars, catch_alls) = (watched.sidecars(), watched.catch_alls());
            let plan = plan(
                &pass.desired,
                Live {
                    sidecars: &sidecars,
                    catch_alls: &catch_alls,
                },
                // Read by a dry-run's log and the debug log of each write, which also
                // keep the live values as text to diff against.
                watched.keep_text,
            );
            (plan, sidecars.values().filter(|l| l.ours).count())
        };
        let lists = (*watched.relist.borrow(), watched.listed_generation());
        let guarded =
            self.removal_guard
                .check(&mut plan, (live_ours, pass.killed), lists, Instant::now());
        self.recheck_at = None;
        if let Guarded::Held { relist, left, .. } = guarded {
            if let Some(generation) = relist {
                watched.relist.send_replace(generation);
            }
            // Past the window, fresh lists still running: look again soon.
            self.recheck_at = Some(Instant::now() + left.max(Duration::from_secs(1)));
        }
        match guarded {
            Guarded::Held { removal, left, .. } if self.last_plan.removals_held.is_empty() => {
                tracing::warn!(%removal, max_removal_percent = self.removal_guard.max_percent,
                    confirm_secs = self.removal_guard.confirm.as_secs(),
                    "this pass would delete the Sidecars of {removal} at once: deletes held (a \
                     truncated list or a passing glitch looks like this), fresh lists asked; they \
                     go ahead in {} s if fresh lists agree",
                    left.as_secs());
            }
            Guarded::Confirmed(removal) if !self.last_plan.removals_held.is_empty() => {
                tracing::warn!(%removal, "the mass removal stood for the confirm window and fresh lists agree: deleting");
            }
            Guarded::Pass if !self.last_plan.removals_held.is_empty() => {
                tracing::info!("held Sidecar deletes no longer wanted: nothing deleted");
            }
            _ => {}
        }
        stats
            .removals_held
            .store(plan.removals_held.len() as u64, Relaxed);
        stats.passes.fetch_add(1, Relaxed);
        stats
            .capped
            .store(pass.desired.capped.len() as u64, Relaxed);
        if !plan.blocked.is_empty() && plan.blocked != self.last_plan.blocked {
            stats.blocked.fetch_add(plan.blocked.len() as u64, Relaxed);
            tracing::warn!(workloads = ?plan.blocked, "the name of a Sidecar or EnvoyFilter we would write is taken by an object that is not ours: workload left alone");
        }
        let mut ok = true;
        if self.config.dry_run {
            if plan != *self.last_plan {
                for c in &plan.changes {
                    tracing::info!(kind = ?c.kind, namespace = %c.namespace, name = %c.name, action = ?c.action,
                        diff = %c.diff.join("\n"), "dry-run: would change");
                }
            }
        } else {
            // The kill switch must act within seconds: deletes are not spaced out then.
            let gap = if pass.killed {
                Duration::ZERO
            } else {
                self.min_gap
            };
            let cluster = Cluster {
                client: &self.client,
                leader,
                timeout: self.config.timeout,
            };
            let outcome = apply(&cluster, &plan, &pass.desired, watched, stats, gap).await;
            // The gateway's routes follow the mesh (not the kill switch: first calls
            // through the gateway keep working either way).
            let routes_failed = if *leader.borrow() {
                let rendered = super::routing::render(&pass.gateway, &self.routing);
                super::routing::sync(
                    &self.client,
                    rendered,
                    &self.config.render.gateway_namespace,
                    &mut self.routing,
                    self.config.timeout,
                )
                .await
            } else {
                false
            };
            ok = !(outcome.failed || routes_failed);
            stats.writes.record(outcome.health(routes_failed));
            if let Some(recorder) = &self.recorder {
                publish_events(recorder, &pass.desired, &outcome.created, &mut self.evented).await;
            }
        }
        let plan = Arc::new(plan);
        *stats.plan.lock().unwrap_or_else(PoisonError::into_inner) = plan.clone();
        self.last_plan = plan;
        stats
            .last_pass_ms
            .store(started.elapsed().as_millis() as u64, Relaxed);
        ok
    }
}

/// The object reference of a workload, for Events.
fn workload_ref(id: &WorkloadId) -> ObjectReference {
    let api_version = match id.kind {
        WorkloadKind::Deployment
        | WorkloadKind::StatefulSet
        | WorkloadKind::DaemonSet
        | WorkloadKind::ReplicaSet => "apps/v1",
        WorkloadKind::CronJob | WorkloadKind::Job => "batch/v1",
        WorkloadKind::Pod => "v1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(id.kind.as_str().into()),
        namespace: Some(id.namespace.to_string()),
        name: Some(id.name.to_string()),
        ..ObjectReference::default()
    }
}

/// One Event about a workload.
#[derive(Debug, Clone, PartialEq)]
struct WorkloadEvent {
    warning: bool,
    reason: &'static str,
    action: &'static str,
    note: String,
}

/// Creates `events.k8s.io/v1` Events as kube-runtime's `Recorder` does, without its
/// cache: the Recorder keeps every Event it published for 6 minutes to count repeats
/// into a series, and scans the whole cache on every publish (the first pass over a
/// 20k-workload mesh publishes 20k `Scoped` Events: ~47 MB kept and a quadratic scan,
/// bench P7). Ours never repeat: `Scoped` goes out once per created Sidecar and a
/// Warning once per change of what a workload was told ([`publish_events`]).
struct EventPublisher {
    client: Client,
    /// `reportingInstance`: the pod's name.
    instance: String,
}

impl EventPublisher {
    const CONTROLLER: &'static str = "lazyxds";

    /// The Event as kube-runtime's `Recorder::generate_event` builds it.
    fn event(
        &self,
        e: &WorkloadEvent,
        regarding: ObjectReference,
    ) -> k8s_openapi::api::events::v1::Event {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let now = k8s_openapi::jiff::Timestamp::now();
        k8s_openapi::api::events::v1::Event {
            action: Some(e.action.to_string()),
            reason: Some(e.reason.to_string()),
            event_time: Some(MicroTime(now)),
            note: Some(e.note.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(Self::CONTROLLER),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            regarding: Some(regarding),
            reporting_controller: Some(Self::CONTROLLER.to_string()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if e.warning { "Warning" } else { "Normal" }.to_string()),
            ..Default::default()
        }
    }

    async fn publish(
        &self,
        e: &WorkloadEvent,
        regarding: ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = self.event(e, regarding);
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), &namespace)
            .create(&kube::api::PostParams::default(), &event)
            .await
            .map(drop)
    }
}

/// Events on workloads: `Scoped` when their Sidecar is first created, `NotScoped` when a
/// refusal appears or its reason changes, `HostCapReached` when a scoped workload stops
/// learning at the cap. Failures are logged, never retried.
async fn publish_events(
    recorder: &EventPublisher,
    desired: &Desired,
    created: &[WorkloadId],
    evented: &mut BTreeMap<WorkloadId, String>,
) {
    let mut events: Vec<(WorkloadId, WorkloadEvent)> = Vec::new();
    for id in created {
        let hosts = desired
            .sidecar_of(id)
            .map_or(0, |s| s.spec.egress.first().map_or(0, |e| e.hosts.len()));
        events.push((id.clone(), WorkloadEvent {
            warning: false,
            reason: "Scoped",
            note: format!("lazyxds created a Sidecar listing the {hosts} hosts this workload uses; HTTP to other hosts goes through the lazy gateway"),
            action: "CreateSidecar",
        }));
    }
    // What each workload was last told, so a Warning is published once per change.
    let now: BTreeMap<WorkloadId, String> = desired
        .refusals
        .iter()
        .map(|r| {
            (
                r.workload.clone(),
                format!("lazyxds does not scope this workload: {}", r.reason),
            )
        })
        .chain(
            desired
                .capped
                .iter()
                .map(|c| (c.workload.clone(), format!("lazyxds: {c}"))),
        )
        .collect();
    let capped: std::collections::BTreeSet<&WorkloadId> =
        desired.capped.iter().map(|c| &c.workload).collect();
    for (id, note) in &now {
        if evented.get(id) != Some(note) {
            let (reason, action) = if capped.contains(id) {
                ("HostCapReached", "KeepSidecar")
            } else {
                ("NotScoped", "RefuseSidecar")
            };
            events.push((
                id.clone(),
                WorkloadEvent {
                    warning: true,
                    reason,
                    note: note.clone(),
                    action,
                },
            ));
        }
    }
    *evented = now;
    for (id, event) in events {
        if let Err(error) = recorder.publish(&event, workload_ref(&id)).await {
            tracing::warn!(workload = %id, %error, "cannot publish an Event");
        }
    }
}

/// Where writes go.
struct Cluster<'a> {
    client: &'a Client,
    leader: &'a signal::Receiver<bool>,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Outcome {
    /// Something failed: retry with backoff.
    failed: bool,
    /// Workloads whose Sidecar was created in this pass.
    created: Vec<WorkloadId>,
    /// Writes tried (Sidecars and EnvoyFilters), how many failed, the last reason.
    tried: usize,
    failures: usize,
    last_failure: Option<String>,
}

impl Outcome {
    /// Not ready when every write of the pass failed (or, with none to make, the
    /// gateway's routes could not be written): one object the API refuses must not take
    /// the leader out of service.
    fn health(&self, routes_failed: bool) -> Result<(), String> {
        if self.tried > 0 && self.failures == self.tried {
            return Err(format!(
                "every write of the last pass failed ({} of {}; last: {})",
                self.failures,
                self.tried,
                self.last_failure.as_deref().unwrap_or("?")
            ));
        }
        if self.tried == 0 && routes_failed {
            return Err("writing the gateway's routing objects failed".into());
        }
        Ok(())
    }
}

/// Carries out `plan`, checking leadership before every write. A Sidecar is not created
/// or updated when its EnvoyFilter failed in this pass.
async fn apply(
    target: &Cluster<'_>,
    plan: &Plan,
    desired: &Desired,
    watched: &Watched,
    stats: &WriterStats,
    min_gap: Duration,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut filter_failed = std::collections::BTreeSet::new();
    for change in &plan.changes {
        if !*target.leader.borrow() {
            tracing::info!("lost leadership: stopping writes");
            return outcome;
        }
        let key = (change.namespace.clone(), change.name.clone());
        if change.kind == Kind::Sidecar
            && change.action != Action::Delete
            && filter_failed.contains(&key)
        {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(
            target.client.clone(),
            &change.namespace,
            &change.kind.resource(),
        );
        let timeout = target.timeout;
        let started = Instant::now();
        // Rendered one change at a time (the plan keeps none).
        let body = match change.action {
            Action::Delete => None,
            Action::Create | Action::Update => body_of(desired, change.kind, &key),
        };
        let result = match (&change.action, &body) {
            (Action::Delete, _) => {
                match tokio::time::timeout(
                    timeout,
                    api.delete(&change.name, &DeleteParams::default()),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(()),
                    Ok(Err(e)) => Err(reason(&e)),
                    Err(_) => Err("timeout".into()),
                }
            }
            (_, Some(body)) => {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                match tokio::time::timeout(
                    timeout,
                    api.patch(&change.name, &params, &Patch::Apply(body)),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(reason(&e)),
                    Err(_) => Err("timeout".into()),
                }
            }
            // The pass planned it, so it has it: never expected, but counted and
            // retried rather than logged as written.
            (_, None) => Err(format!(
                "no {:?} {}/{} in the pass to write",
                change.kind, key.0, key.1
            )),
        };
        outcome.tried = outcome.tried.saturating_add(1);
        match result {
            Ok(()) => {
                // Record what we wrote now, so the next pass does not write it again
                // before the watch echoes it back.
                let (mut live, is_ours): (_, IsOurs) = match change.kind {
                    Kind::Sidecar => (watched.sidecars(), is_ours),
                    Kind::EnvoyFilter => (watched.catch_alls(), is_our_catch_all),
                };
                match (&change.action, &body) {
                    (Action::Delete, _) => {
                        live.remove(&key);
                        stats.deletes.fetch_add(1, Relaxed);
                    }
                    (action, Some(body)) => {
                        live.insert(key, live_from_body(body, is_ours, watched.keep_text));
                        stats.applies.fetch_add(1, Relaxed);
                        if *action == Action::Create && change.kind == Kind::Sidecar {
                            outcome.created.extend(workload_of(&change.namespace, body));
                        }
                    }
                    _ => {}
                }
                tracing::info!(kind = ?change.kind, namespace = %change.namespace, name = %change.name,
                    action = ?change.action, ms = started.elapsed().as_millis() as u64, "written");
                // Why it was written, for an operator asking why an object changed.
                tracing::debug!(kind = ?change.kind, namespace = %change.namespace, name = %change.name,
                    diff = %change.diff.join("\n"), "written: diff");
            }
            Err(reason) => {
                outcome.failed = true;
                outcome.failures = outcome.failures.saturating_add(1);
                outcome.last_failure = Some(reason.clone());
                if change.kind == Kind::EnvoyFilter {
                    filter_failed.insert(key);
                }
                stats.error(&reason);
                tracing::warn!(kind = ?change.kind, namespace = %change.namespace, name = %change.name,
                    action = ?change.action, %reason, "write failed; will retry");
            }
        }
        let spent = started.elapsed();
        if spent < min_gap {
            tokio::time::sleep(min_gap - spent).await;
        }
    }
    outcome
}

/// The object `plan` planned for `key`: the pass's desired Sidecar or catch-all.
fn body_of(desired: &Desired, kind: Kind, key: &(String, String)) -> Option<Value> {
    let text = match kind {
        Kind::Sidecar => desired.sidecars.get(key)?,
        Kind::EnvoyFilter => desired.catch_alls.get(key)?,
    };
    Some(text.value()).filter(|body| !body.is_null())
}

/// The workload a Sidecar body was rendered for (`lazyxds.io/workload: Kind/name`).
fn workload_of(namespace: &str, body: &Value) -> Option<WorkloadId> {
    let value = body["metadata"]["annotations"][ANNOTATION_WORKLOAD].as_str()?;
    WorkloadId::from_annotation(namespace, value).ok()
}

fn live_from_body(body: &Value, is_ours: IsOurs, keep_text: bool) -> LiveObject {
    let meta = &body["metadata"];
    LiveObject::new(
        string_map(&meta["labels"]),
        string_map(&meta["annotations"]),
        &body["spec"],
        is_ours,
        keep_text,
    )
}

#[cfg(test)]
mod tests {
    use super::super::watch::Kept;
    use super::*;
    use lazyxds_index::objects::ANNOTATION_DEPS;
    use lazyxds_index::{desired, Index, IndexConfig, Topology};

    const TOPOLOGY: &str = r#"
namespaces: [{name: shop, annotations: {lazyxds.io/enabled: "true"}}]
workloads:
  - {kind: Deployment, namespace: shop, name: web, labels: {app: web}, pods: [{ip: 10.0.0.1}]}
services:
  - {namespace: shop, name: api, selector: {app: api}, ports: [{port: 80, name: http}]}
"#;

    fn mk_desired() -> Desired {
        let topology = Topology::from_yaml(TOPOLOGY, "t.yaml").unwrap();
        let mut index = Index::new(IndexConfig::default());
        topology.apply_to(&mut index);
        desired(&index, &RenderConfig::default())
    }

    type LiveMap = BTreeMap<(String, String), LiveObject>;

    /// What the watches would hold once `desired` is applied (`ours`), or when every name
    /// is taken by someone else's objects; values kept as text.
    fn mk_live(desired: &Desired, ours: bool) -> (LiveMap, LiveMap) {
        mk_live_kept(desired, ours, true)
    }

    /// [`mk_live`], values kept as text or as digests.
    fn mk_live_kept(desired: &Desired, ours: bool, keep_text: bool) -> (LiveMap, LiveMap) {
        let live = |body: Value, is_ours: IsOurs| {
            if ours {
                live_from_body(&body, is_ours, keep_text)
            } else {
                let none = BTreeMap::new;
                LiveObject::new(none(), none(), &Value::Null, is_ours, keep_text)
            }
        };
        let sidecars = desired
            .sidecars
            .iter()
            .map(|(k, s)| (k.clone(), live(s.value(), is_ours)))
            .collect();
        let filters = desired
            .catch_alls
            .iter()
            .map(|(k, f)| (k.clone(), live(f.value(), is_our_catch_all)))
            .collect();
        (sidecars, filters)
    }

    fn live<'a>(maps: &'a (LiveMap, LiveMap)) -> Live<'a> {
        Live {
            sidecars: &maps.0,
            catch_alls: &maps.1,
        }
    }

    fn actions(plan: &Plan) -> Vec<(Kind, Action, String)> {
        plan.changes
            .iter()
            .map(|c| (c.kind, c.action, format!("{}/{}", c.namespace, c.name)))
            .collect()
    }

    const WEB: &str = "shop/lazyxds-deployment-web";

    fn deletes(n: usize) -> Plan {
        let mut plan = Plan::default();
        for i in 0..n {
            let key = ("shop".to_string(), format!("lazyxds-deployment-w{i}"));
            plan.changes.push(delete(Kind::Sidecar, &key));
            plan.changes.push(delete(Kind::EnvoyFilter, &key));
        }
        plan
    }

    #[test]
    fn a_mass_removal_is_held_until_it_stands_for_the_confirm_window() {
        let t0 = Instant::now();
        let confirm = Duration::from_secs(120);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (deletes, live Sidecars of ours, kill switch, seconds since the first pass, what).
        let held = |removed, before, left, relist| Guarded::Held {
            removal: Removal { before, removed },
            left: Duration::from_secs(left),
            relist,
        };
        let confirmed = Guarded::Confirmed(Removal {
            before: 20,
            removed: 18,
        });
        // Per pass: deletes, our live Sidecars, kill switch, (relist generation asked,
        // oldest generation listed), seconds since the first pass; what the guard does.
        type Pass = (usize, usize, bool, (u64, u64), u64, Guarded);
        let cases: Vec<(&str, Vec<Pass>)> = vec![
            ("one opt-out", vec![(1, 2, false, (0, 0), 0, Guarded::Pass)]),
            (
                "a small mesh emptied",
                vec![(5, 5, false, (0, 0), 0, Guarded::Pass)],
            ),
            (
                "half exactly",
                vec![(10, 20, false, (0, 0), 0, Guarded::Pass)],
            ),
            (
                "a truncated list that corrects itself",
                vec![
                    (18, 20, false, (0, 0), 0, held(18, 20, 120, Some(1))),
                    (18, 20, false, (1, 0), 30, held(18, 20, 90, None)),
                    (0, 20, false, (1, 1), 40, Guarded::Pass),
                    // A new window, new lists.
                    (18, 20, false, (1, 1), 50, held(18, 20, 120, Some(2))),
                ],
            ),
            (
                "a removal that stands",
                vec![
                    (18, 20, false, (3, 3), 0, held(18, 20, 120, Some(4))),
                    (18, 20, false, (4, 4), 119, held(18, 20, 1, None)),
                    (18, 20, false, (4, 4), 120, confirmed),
                ],
            ),
            (
                "the window is over but the fresh lists are not done",
                vec![
                    (18, 20, false, (0, 0), 0, held(18, 20, 120, Some(1))),
                    (18, 20, false, (1, 0), 300, held(18, 20, 0, None)),
                    (18, 20, false, (1, 1), 301, confirmed),
                ],
            ),
            (
                "the kill switch",
                vec![(20, 20, true, (0, 0), 0, Guarded::Pass)],
            ),
        ];
        for (what, passes) in cases {
            let mut guard = RemovalGuard::new(50, confirm);
            for (removed, before, killed, lists, secs, want) in passes {
                let mut plan = deletes(removed);
                let got = guard.check(&mut plan, (before, killed), lists, at(secs));
                assert_eq!(got, want, "{what} at {secs} s");
                if matches!(want, Guarded::Held { .. }) {
                    assert_eq!(plan.changes, vec![], "{what}: nothing deleted");
                    assert_eq!(plan.removals_held.len(), removed, "{what}");
                } else {
                    assert_eq!(plan.changes.len(), 2 * removed, "{what}: every delete kept");
                    assert!(plan.removals_held.is_empty(), "{what}");
                }
            }
        }
        // 100 turns it off.
        let mut plan = deletes(20);
        assert_eq!(
            RemovalGuard::new(100, confirm).check(&mut plan, (20, false), (0, 0), t0),
            Guarded::Pass
        );
    }

    #[test]
    fn creates_the_envoy_filter_then_the_sidecar_and_nothing_when_equal() {
        let desired = mk_desired();
        let empty = (BTreeMap::new(), BTreeMap::new());
        let plan = plan(&desired, live(&empty), true);
        assert_eq!(
            actions(&plan),
            vec![
                (Kind::EnvoyFilter, Action::Create, WEB.to_string()),
                (Kind::Sidecar, Action::Create, WEB.to_string()),
            ]
        );
        assert!(
            plan.changes[1]
                .diff
                .iter()
                .any(|l| l == "+    - istio-system/*"),
            "{:?}",
            plan.changes[1].diff
        );
        assert_eq!(
            super::plan(&desired, live(&mk_live(&desired, true)), true),
            Plan::default()
        );
        // The filter alone is missing (deleted by hand): only it is written.
        let mut maps = mk_live(&desired, true);
        maps.1.clear();
        assert_eq!(
            actions(&super::plan(&desired, live(&maps), true)),
            vec![(Kind::EnvoyFilter, Action::Create, WEB.to_string())]
        );
    }

    /// Without diffs (and with the live values kept as digests, as outside dry-run and the
    /// debug log), a plan makes exactly the changes of one with diffs over text.
    #[test]
    fn a_plan_without_diffs_makes_the_same_changes() {
        let desired = mk_desired();
        let drifted_spec = spec_text(&serde_json::json!({"egress": [{"hosts": ["*/*"]}]}));
        // (what is live, changes it needs)
        let cases = |keep_text: bool| {
            let empty = (BTreeMap::new(), BTreeMap::new());
            let mut only_filter_missing = mk_live_kept(&desired, true, keep_text);
            only_filter_missing.1.clear();
            let mut drifted = mk_live_kept(&desired, true, keep_text);
            for l in drifted.0.values_mut() {
                l.spec = Kept::new(&drifted_spec, keep_text);
            }
            let mut deps_drifted = mk_live_kept(&desired, true, keep_text);
            for l in deps_drifted.0.values_mut() {
                let mut annotations: BTreeMap<String, String> = BTreeMap::new();
                annotations.insert(ANNOTATION_DEPS.into(), r#"{"x.shop.svc":1}"#.into());
                l.annotations = StringPairs::new(annotations, keep_text);
            }
            [
                ("nothing", empty, 2),
                (
                    "everything, as desired",
                    mk_live_kept(&desired, true, keep_text),
                    0,
                ),
                ("the Sidecar, no filter", only_filter_missing, 1),
                ("a drifted Sidecar", drifted, 1),
                ("a Sidecar with other deps", deps_drifted, 1),
                ("names taken", mk_live_kept(&desired, false, keep_text), 0),
            ]
        };
        for ((what, text, changes), (_, digests, _)) in cases(true).into_iter().zip(cases(false)) {
            let with = plan(&desired, live(&text), true);
            let without = plan(&desired, live(&text), false);
            let over_digests = plan(&desired, live(&digests), false);
            assert_eq!(with.changes.len(), changes, "{what}");
            assert!(
                with.changes.iter().all(|c| !c.diff.is_empty()),
                "{what}: {with:?}"
            );
            let undiffed = Plan {
                changes: with
                    .changes
                    .iter()
                    .map(|c| Change {
                        diff: Vec::new(),
                        ..c.clone()
                    })
                    .collect(),
                ..with.clone()
            };
            assert_eq!(without, undiffed, "{what}");
            assert_eq!(over_digests, undiffed, "{what}, digests");
        }
    }

    #[test]
    fn updates_drift_ignoring_foreign_labels_and_annotations() {
        let desired = mk_desired();
        let mut maps = mk_live(&desired, true);
        let key = maps.0.keys().next().unwrap().clone();
        let web = maps.0.get_mut(&key).unwrap();
        web.annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        web.labels.insert("team".into(), "a".into());
        assert_eq!(
            plan(&desired, live(&maps), true),
            Plan::default(),
            "foreign metadata is not ours to manage"
        );
        let web = maps.0.get_mut(&key).unwrap();
        let mut spec = web.spec();
        spec["egress"][0]["hosts"] = serde_json::json!(["*/*"]);
        web.spec = Kept::new(&spec_text(&spec), true);
        // A drifted EnvoyFilter is put back, before its Sidecar.
        let filter = maps.1.get_mut(&key).unwrap();
        let mut spec = filter.spec();
        spec["configPatches"] = serde_json::json!([]);
        filter.spec = Kept::new(&spec_text(&spec), true);
        let plan = plan(&desired, live(&maps), true);
        assert_eq!(
            actions(&plan),
            vec![
                (Kind::EnvoyFilter, Action::Update, WEB.to_string()),
                (Kind::Sidecar, Action::Update, WEB.to_string()),
            ]
        );
        assert!(
            plan.changes[1].diff.contains(&"-    - '*/*'".to_string()),
            "{:?}",
            plan.changes[1].diff
        );
    }

    #[test]
    fn deletes_the_sidecar_then_the_envoy_filter_of_ours_no_longer_desired() {
        let desired = mk_desired();
        let mut maps = mk_live(&desired, true);
        let gone = ("shop".to_string(), "lazyxds-deployment-gone".to_string());
        let stale_sidecar = maps.0.values().next().unwrap().clone();
        let stale_filter = maps.1.values().next().unwrap().clone();
        maps.0.insert(gone.clone(), stale_sidecar.clone());
        maps.1.insert(gone.clone(), stale_filter.clone());
        // Not ours: a user's Sidecar, and the install's own EnvoyFilter (ours, but not a
        // per-workload catch-all).
        maps.0.insert(
            ("shop".into(), "users-own".into()),
            LiveObject {
                ours: false,
                ..stale_sidecar
            },
        );
        let install_filter = live_from_body(
            &serde_json::json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "lazyxds",
                "app.kubernetes.io/component": "routing"}}, "spec": {}}),
            is_our_catch_all,
            true,
        );
        assert!(!install_filter.ours);
        maps.1.insert(
            ("lazyxds-system".into(), "lazyxds-external".into()),
            install_filter,
        );
        assert_eq!(
            actions(&plan(&desired, live(&maps), true)),
            vec![
                (
                    Kind::Sidecar,
                    Action::Delete,
                    "shop/lazyxds-deployment-gone".to_string()
                ),
                (
                    Kind::EnvoyFilter,
                    Action::Delete,
                    "shop/lazyxds-deployment-gone".to_string()
                ),
            ]
        );
    }

    #[test]
    fn never_takes_over_a_sidecar_or_envoy_filter_it_does_not_own() {
        let desired = mk_desired();
        let theirs = mk_live(&desired, false);
        let plan = plan(&desired, live(&theirs), true);
        assert_eq!(plan.changes, vec![]);
        assert_eq!(plan.blocked, vec![WEB.to_string()]);
        // Only the EnvoyFilter's name is taken: the Sidecar is not written either (it
        // would hide hosts with nowhere for their first calls to go).
        let ours = mk_live(&desired, true);
        let maps = (BTreeMap::new(), theirs.1.clone());
        let plan = super::plan(&desired, live(&maps), true);
        assert_eq!(plan.changes, vec![]);
        assert_eq!(plan.blocked, vec![WEB.to_string()]);
        let maps = (theirs.0, ours.1);
        assert_eq!(
            super::plan(&desired, live(&maps), true).blocked,
            vec![WEB.to_string()]
        );
    }
}
