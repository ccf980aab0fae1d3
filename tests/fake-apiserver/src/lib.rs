//! An in-process fake Kubernetes API server for tests.
//!
//! It listens on `127.0.0.1:0` and speaks enough of the real REST + watch protocol that the
//! real [`kube::Client`], `kube::Api` and kube-runtime's `watcher` work unchanged: list (label
//! and field selectors, `limit`/`continue`), watch (`resourceVersion`, bookmarks,
//! `timeoutSeconds`, `sendInitialEvents`, 410 Gone once the event window has moved past the
//! requested version), get, create, replace (resourceVersion preconditions), JSON merge /
//! strategic merge (treated as merge) / JSON patch, server-side apply (field managers, force,
//! `managedFields`, conflicts), delete (finalizers, preconditions), deletecollection, the
//! `status` subresource and `dryRun=All`. Objects of any group/version/resource are stored as
//! JSON; there is no schema.
//!
//! Tests can seed and mutate the "cluster" directly ([`FakeApiServer::apply_object`] and
//! friends go through the same write path, so watches see the changes), inject faults
//! ([`FakeApiServer::fail_next`], [`FakeApiServer::set_latency`],
//! [`FakeApiServer::drop_watches`], [`FakeApiServer::expire_watch_window`]) and read the
//! request log ([`FakeApiServer::requests`], [`FakeApiServer::rbac_rules`]).
//!
//! Note that kube's client retries 429 and 503 itself (honouring `Retry-After`, up to 15
//! times); an injected 429 shows in the log as a retried request unless the client is built
//! with `default_retry = false`.
//!
//! # Not modelled
//! - Authentication, authorization (RBAC is derived from the log, never enforced), admission
//!   (objects may be created in namespaces that do not exist), validation, defaulting, CRD
//!   schemas and pruning: any JSON object of any group/version/resource is accepted.
//! - Garbage collection and graceful deletion: `ownerReferences` and `propagationPolicy` are
//!   ignored, deleting a namespace leaves its objects, pods vanish at once (finalizers are
//!   honoured). No controllers: nothing creates pods, assigns IPs or fills in status.
//! - Versions: one stored copy per group + resource, served at every version by rewriting
//!   `apiVersion` only (no conversion). `events` in core/v1 and events.k8s.io/v1 are separate.
//! - Server-side apply is leaf-granular with every list atomic (no associative lists keyed by
//!   `name`/`port`), strategic merge patch is plain JSON merge patch (no `$patch`
//!   directives), request `managedFields` are ignored, managers of updates without
//!   `fieldManager` are `unknown`, bodies must be JSON (not YAML).
//! - Every resource behaves as if it had a `status` subresource: the main endpoint never
//!   writes `status`. Other subresources (scale, eviction, log, exec, binding, …) are 404.
//! - Lists always read current state (no MVCC: `resourceVersion`/`resourceVersionMatch` on
//!   lists are ignored); `continue` pages come from current state labelled with the first
//!   page's resourceVersion, so list + watch still converges; no `remainingItemCount`.
//! - Watches: the history is a count of events, not etcd's time-based compaction; a future
//!   resourceVersion just waits; bookmarks every [`Options::bookmark_interval`] (real: ~1
//!   min); no watch cache, progress notifications or legacy `/watch/` paths.
//! - Only JSON (no protobuf, CBOR, Table, gzip), HTTP/1.1, legacy discovery from the
//!   built-in table (no aggregated discovery, no OpenAPI), no priority & fairness (429s only
//!   when injected), `fieldValidation` ignored.
//!
//! ```no_run
//! # async fn demo() {
//! use fake_apiserver::FakeApiServer;
//! use k8s_openapi::api::core::v1::Pod;
//! use kube::Api;
//!
//! let server = FakeApiServer::start().await;
//! server
//!     .apply_object(serde_json::json!({
//!         "apiVersion": "v1", "kind": "Pod",
//!         "metadata": {"name": "web-0", "namespace": "default"},
//!     }))
//!     .unwrap();
//! let pods: Api<Pod> = Api::namespaced(server.client(), "default");
//! assert!(pods.get("web-0").await.is_ok());
//! # }
//! ```

#![deny(unsafe_code)]

mod fields;
mod log;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod time;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use crate::log::{Failure, RequestMatch, RequestRecord, Verb};
pub use crate::resources::ResourceInfo;
pub use crate::status::ApiError;

use crate::fields::Scope;
use crate::log::{FaultRule, Faults};
use crate::store::{DeleteOutcome, Store, WriteOpts};

/// The field manager of test-side writes made with [`FakeApiServer::apply_object`].
pub const TEST_MANAGER: &str = "fake-apiserver-test";

/// Server settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many events the watch history keeps; a watch from further back gets 410 Gone.
    pub event_window: usize,
    /// How often open watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Watch duration when the request has no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            event_window: 10_000,
            bookmark_interval: Duration::from_millis(500),
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct OpenWatch {
    pub(crate) record: RequestRecord,
    pub(crate) kill: Option<oneshot::Sender<()>>,
}

pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// The store's resourceVersion after each commit; watches wait on it.
    pub(crate) rv_tx: watch::Sender<u64>,
    log: Mutex<Vec<RequestRecord>>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) watches: Mutex<BTreeMap<u64, OpenWatch>>,
    next_watch: AtomicU64,
    pub(crate) options: Options,
    pub(crate) addr: SocketAddr,
}

impl Shared {
    /// Runs a store operation and wakes the watches if it committed anything.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, rv) = {
            let mut st = lock(&self.store);
            let r = f(&mut st);
            (r, st.rv)
        };
        self.rv_tx.send_if_modified(|cur| {
            let newer = rv > *cur;
            if newer {
                *cur = rv;
            }
            newer
        });
        r
    }

    pub(crate) fn resource_version(&self) -> u64 {
        lock(&self.store).rv
    }

    pub(crate) fn log(&self, mut r: RequestRecord) {
        tracing::debug!(method = %r.method, path = %r.path, query = %r.query, code = r.code, "fake-apiserver");
        let mut log = lock(&self.log);
        r.seq = log.len() as u64;
        log.push(r);
    }

    pub(crate) fn register_watch(&self, w: OpenWatch) -> u64 {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        lock(&self.watches).insert(id, w);
        id
    }
}

/// A running fake API server. Dropping it stops the server and closes every connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.shared.watches).clear();
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Starts a server with default [`Options`] on `127.0.0.1:0`. Needs a Tokio runtime.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a server with the given options on `127.0.0.1:0`.
    pub async fn start_with(options: Options) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("fake-apiserver: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake-apiserver: local address");
        let store = Store::new(options.event_window);
        let (rv_tx, _) = watch::channel(store.rv);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            rv_tx,
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            watches: Mutex::new(BTreeMap::new()),
            next_watch: AtomicU64::new(0),
            options,
            addr,
        });
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        FakeApiServer { shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A client configuration for this server (default namespace `default`, kube's default
    /// retry policy on; set `default_retry = false` to see 429/503 directly).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("a valid URL"))
    }

    /// Writes `dir/kubeconfig` pointing at this server, for a separate process (the real
    /// binary) to use; returns its path.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        let server = self.url();
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: '{server}'}}}}]\n\
                 users: [{{name: client, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: client}}}}]\n"
            ),
        )?;
        Ok(path)
    }

    /// A real `kube::Client` for this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("fake-apiserver: build kube::Client")
    }

    /// Teaches the server a resource's kind, plural and scope (the common core, apps, batch,
    /// coordination, events, RBAC and Istio networking kinds are known already; others are
    /// served anyway, learning their kind from the first object written).
    pub fn register_resource(&self, ar: &kube::core::ApiResource, namespaced: bool) {
        let mut st = lock(&self.shared.store);
        let mut versions = vec![ar.version.clone()];
        if let Some(known) = st
            .registry
            .all()
            .find(|i| i.group == ar.group && i.plural == ar.plural)
        {
            versions.extend(known.versions.iter().filter(|v| **v != ar.version).cloned());
        }
        st.registry.register(ResourceInfo {
            group: ar.group.clone(),
            versions,
            kind: ar.kind.clone(),
            plural: ar.plural.clone(),
            namespaced: Some(namespaced),
            guessed: false,
        });
    }

    /// The resource registered for an apiVersion + kind (registering a guess if unknown).
    pub fn resource_info(&self, api_version: &str, kind: &str) -> ResourceInfo {
        lock(&self.shared.store).registry.by_kind(api_version, kind)
    }

    // ---- the store, as other actors (users, kubelet, controllers) would change it ----

    /// Creates or replaces (unconditionally) an object, as [`TEST_MANAGER`]. The object needs
    /// `apiVersion`, `kind`, `metadata.name` and, if namespaced, `metadata.namespace`; it may
    /// carry `status`. Watches see the change.
    pub fn apply_object(&self, obj: Value) -> Result<Value, ApiError> {
        self.apply_object_as(TEST_MANAGER, obj)
    }

    /// [`apply_object`](Self::apply_object) as another field manager (`kubectl`, a user, …).
    pub fn apply_object_as(&self, manager: &str, mut obj: Value) -> Result<Value, ApiError> {
        let (api_version, kind, namespace, name) = identity(&obj)?;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let opts = WriteOpts {
            manager,
            scope: Scope::All,
            dry_run: false,
        };
        self.shared.write(|s| {
            let t = s.target_for(&api_version, &kind, namespace.as_deref());
            if s.get(&t, &name).is_ok() {
                s.replace(&t, &name, obj, opts)
            } else {
                s.create(&t, obj, opts)
            }
        })
    }

    /// Server-side apply from the test, as `manager` (conflicts and ownership as over HTTP).
    pub fn server_side_apply(
        &self,
        manager: &str,
        obj: Value,
        force: bool,
    ) -> Result<Value, ApiError> {
        let (api_version, kind, namespace, name) = identity(&obj)?;
        let opts = WriteOpts {
            manager,
            scope: Scope::All,
            dry_run: false,
        };
        self.shared.write(|s| {
            let t = s.target_for(&api_version, &kind, namespace.as_deref());
            s.apply(&t, &name, obj, force, opts).map(|(o, _)| o)
        })
    }

    /// JSON merge patch (`null` deletes), as [`TEST_MANAGER`]; may touch `status`.
    pub fn merge_patch_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let opts = WriteOpts {
            manager: TEST_MANAGER,
            scope: Scope::All,
            dry_run: false,
        };
        self.shared.write(|s| {
            let t = s.target_for(api_version, kind, namespace);
            s.patch(&t, name, store::PatchKind::Merge, &patch, opts)
        })
    }

    /// Deletes an object (404 if absent). With finalizers it only gets a deletionTimestamp
    /// and stays until an update removes them. Returns the object as deleted or pending.
    pub fn delete_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.shared.write(|s| {
            let t = s.target_for(api_version, kind, namespace);
            match s.delete(&t, name, &Value::Null, false)? {
                DeleteOutcome::Deleted(o) | DeleteOutcome::Pending(o) => Ok(o),
            }
        })
    }

    pub fn get_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let mut st = lock(&self.shared.store);
        let t = st.target_for(api_version, kind, namespace);
        st.get(&t, name).ok()
    }

    /// Objects of a kind, in one namespace or (`None`) all, sorted by namespace and name.
    pub fn list_objects(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Vec<Value> {
        let mut st = lock(&self.shared.store);
        let t = st.target_for(api_version, kind, namespace);
        let (_, items) = st.snapshot(&t, &selector::Selectors::default());
        items.iter().map(|o| Store::view(&t, o)).collect()
    }

    /// The store's current resourceVersion (one counter for all objects, as etcd's revision).
    pub fn resource_version(&self) -> u64 {
        self.shared.resource_version()
    }

    // ---- faults ----

    /// Fails the next `n` requests matching `m` with `failure` (rules are consulted in the
    /// order they were added).
    pub fn fail_next(&self, n: usize, m: RequestMatch, failure: Failure) {
        lock(&self.shared.faults).rules.push(FaultRule {
            matcher: m,
            remaining: n,
            failure,
        });
    }

    /// Delays every request matching `m` by `d` (latencies of matching rules add up).
    pub fn set_latency(&self, m: RequestMatch, d: Duration) {
        lock(&self.shared.faults).latency.push((m, d));
    }

    /// Removes all fault and latency rules.
    pub fn clear_faults(&self) {
        let mut f = lock(&self.shared.faults);
        f.rules.clear();
        f.latency.clear();
    }

    /// Injected failures not yet used.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.faults)
            .rules
            .iter()
            .map(|r| r.remaining)
            .sum()
    }

    /// Aborts the open watch connections matching `m` mid-stream (the client sees the
    /// connection end and resumes from its last resourceVersion). Returns how many.
    pub fn drop_watches(&self, m: &RequestMatch) -> usize {
        let mut watches = lock(&self.shared.watches);
        let ids: Vec<u64> = watches
            .iter()
            .filter(|(_, w)| m.matches(&w.record))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(mut w) = watches.remove(id) {
                if let Some(kill) = w.kill.take() {
                    let _ = kill.send(());
                }
            }
        }
        ids.len()
    }

    /// Compacts the event history: every watch from a resourceVersion before now gets an
    /// ERROR event with 410 Gone (and list `continue` tokens from before now expire).
    pub fn expire_watch_window(&self) {
        lock(&self.shared.store).expire();
    }

    /// Watches currently streaming that match `m`.
    pub fn open_watches(&self, m: &RequestMatch) -> usize {
        lock(&self.shared.watches)
            .values()
            .filter(|w| m.matches(&w.record))
            .count()
    }

    /// Waits until at least `n` watches matching `m` are open; false on timeout.
    pub async fn wait_for_watches(&self, m: &RequestMatch, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, || self.open_watches(m) >= n).await
    }

    // ---- the request log ----

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    pub fn requests_matching(&self, m: &RequestMatch) -> Vec<RequestRecord> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| m.matches(r))
            .cloned()
            .collect()
    }

    pub fn count_requests(&self, m: &RequestMatch) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| m.matches(r))
            .count()
    }

    /// Waits until at least `n` requests matching `m` were received; false on timeout.
    pub async fn wait_for_requests(&self, m: &RequestMatch, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, || self.count_requests(m) >= n).await
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// The RBAC rules the logged resource requests need: (API group, resource[/subresource],
    /// verb). Server-side apply counts as `patch`. Non-resource URLs are left out.
    pub fn rbac_rules(&self) -> BTreeSet<(String, String, String)> {
        lock(&self.shared.log)
            .iter()
            .filter_map(|r| {
                Some((
                    r.group.clone(),
                    r.rbac_resource()?,
                    r.verb.rbac().to_string(),
                ))
            })
            .collect()
    }
}

fn identity(obj: &Value) -> Result<(String, String, Option<String>, String), ApiError> {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (s("/apiVersion"), s("/kind"), s("/metadata/name")) {
        (Some(av), Some(k), Some(n)) => Ok((
            av.to_string(),
            k.to_string(),
            s("/metadata/namespace").map(String::from),
            n.to_string(),
        )),
        _ => Err(ApiError::bad_request(
            "the object needs apiVersion, kind and metadata.name",
        )),
    }
}

async fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
