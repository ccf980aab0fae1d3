//! The object store: one monotonically increasing resourceVersion (as etcd), a bounded event
//! history for watches, and the write path shared by HTTP requests and test-side writes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::fields::{self, Path, Scope};
use crate::resources::{api_version, Registry, ResourceInfo};
use crate::selector::Selectors;
use crate::status::ApiError;
use crate::time;

pub(crate) type Gr = (String, String);
type Key = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as watches replay it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) gr: Gr,
    pub(crate) namespace: String,
    pub(crate) ty: EventType,
    pub(crate) object: Arc<Value>,
    /// The object before the change (for selector transitions).
    pub(crate) old: Option<Arc<Value>>,
}

/// Where a request points: a resource at a version, and a namespace (`None`: a cluster-scoped
/// object, or all namespaces for list/watch).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) info: ResourceInfo,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
}

impl Target {
    pub(crate) fn api_version(&self) -> String {
        api_version(&self.info.group, &self.info.version_or(&self.version))
    }

    fn namespaced(&self) -> bool {
        self.info.namespaced.unwrap_or(self.namespace.is_some())
    }

    fn ns_key(&self) -> String {
        if self.namespaced() {
            self.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        }
    }

    fn key(&self, name: &str) -> Key {
        (self.ns_key(), name.to_string())
    }

    fn not_found(&self, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", self.info.qualified()),
        )
        .with_details(json!({"name": name, "group": self.info.group, "kind": self.info.plural}))
    }

    fn conflict(&self, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                self.info.qualified()
            ),
        )
        .with_details(json!({"name": name, "group": self.info.group, "kind": self.info.plural}))
    }
}

impl ResourceInfo {
    fn version_or(&self, v: &str) -> String {
        if v.is_empty() {
            self.versions
                .first()
                .cloned()
                .unwrap_or_else(|| "v1".into())
        } else {
            v.to_string()
        }
    }
}

/// Options of one write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteOpts<'a> {
    pub(crate) manager: &'a str,
    pub(crate) scope: Scope,
    pub(crate) dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
}

pub(crate) enum DeleteOutcome {
    /// Gone (the object as it was deleted, with the deletion's resourceVersion).
    Deleted(Value),
    /// Finalizers pending: the object now carries a deletionTimestamp.
    Pending(Value),
}

/// A managedFields entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: BTreeSet<Path>,
}

fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().map(String::from),
            fields: fields::from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn set_entries(obj: &mut Value, es: &[Entry]) {
    let list: Vec<Value> = es
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields::to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    let meta = meta_mut(obj);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

fn entry_mut<'a>(
    es: &'a mut Vec<Entry>,
    manager: &str,
    operation: &str,
    scope: Scope,
    api_version: &str,
) -> &'a mut Entry {
    let sub = scope.subresource().map(String::from);
    let i = match es
        .iter()
        .position(|e| e.manager == manager && e.operation == operation && e.subresource == sub)
    {
        Some(i) => i,
        None => {
            es.push(Entry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version: String::new(),
                time: String::new(),
                subresource: sub,
                fields: BTreeSet::new(),
            });
            es.len() - 1
        }
    };
    let e = &mut es[i];
    e.api_version = api_version.to_string();
    e.time = time::now();
    e
}

/// Ownership after a non-apply write: changed fields move to `manager`'s Update entry.
fn record_update(old: Option<&Value>, new: &mut Value, opts: &WriteOpts, api_version: &str) {
    let mut es = old.map(entries).unwrap_or_default();
    let old_leaves = old
        .map(|o| fields::leaves(o, opts.scope))
        .unwrap_or_default();
    let changed: Vec<Path> = fields::leaves(new, opts.scope)
        .into_iter()
        .filter(|p| old.and_then(|o| fields::get(o, p)) != fields::get(new, p))
        .collect();
    let removed: Vec<&Path> = old_leaves
        .iter()
        .filter(|p| fields::get(new, p).is_none())
        .collect();
    // A change takes the changed field and everything under it; a changed field under a map
    // someone owns leaves that map owned (maps are granular) unless it stopped being a map.
    for e in &mut es {
        e.fields.retain(|q| {
            let still_map = fields::get(new, q).is_some_and(Value::is_object);
            !changed
                .iter()
                .any(|p| fields::covers(p, q) || (fields::covers(q, p) && !still_map))
                && !removed.iter().any(|p| fields::covers(p, q))
        });
    }
    if !changed.is_empty() {
        entry_mut(&mut es, opts.manager, "Update", opts.scope, api_version)
            .fields
            .extend(changed);
    }
    set_entries(new, &es);
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let o = obj.as_object_mut().expect("just made an object");
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().expect("just made an object")
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// What a write in `scope` may change: `Main` keeps the old status, `Status` keeps everything
/// but the status.
fn restrict(old: Option<&Value>, mut computed: Value, scope: Scope) -> Value {
    match scope {
        Scope::All => computed,
        Scope::Main => {
            if let Some(o) = computed.as_object_mut() {
                match old.and_then(|old| old.get("status")) {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
            computed
        }
        Scope::Status => {
            let mut base = old.cloned().unwrap_or_default();
            if let Some(o) = base.as_object_mut() {
                match computed.as_object_mut().and_then(|c| c.remove("status")) {
                    Some(s) => o.insert("status".into(), s),
                    None => o.remove("status"),
                };
            }
            base
        }
    }
}

/// Everything but metadata and status (a change bumps `metadata.generation`).
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(old) != strip(new)
}

/// Equal but for resourceVersion and managedFields timestamps (a no-op write).
fn same_object(old: &Value, new: &Value) -> bool {
    let norm = |v: &Value| {
        let mut v = v.clone();
        let meta = meta_mut(&mut v);
        meta.remove("resourceVersion");
        if let Some(Value::Array(mf)) = meta.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
        v
    };
    norm(old) == norm(new)
}

fn check_identity(t: &Target, url_name: Option<&str>, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str) {
        if !t.info.guessed && kind != t.info.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                t.info.kind
            )));
        }
    }
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
        if av != t.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                t.api_version()
            )));
        }
    }
    if let (Some(ns), Some(want)) = (meta_str(body, "namespace"), &t.namespace) {
        if t.namespaced() && ns != want {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    if let (Some(name), Some(url)) = (meta_str(body, "name"), url_name) {
        if name != url {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({url})"
            )));
        }
    }
    Ok(())
}

pub(crate) struct Store {
    pub(crate) rv: u64,
    uid_seed: u32,
    next_uid: u64,
    pub(crate) registry: Registry,
    objects: BTreeMap<Gr, BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    pub(crate) window_start: u64,
    max_events: usize,
}

impl Store {
    pub(crate) fn new(max_events: usize) -> Self {
        let uid_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or_default();
        Store {
            rv: 1,
            uid_seed,
            next_uid: 1,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            window_start: 1,
            max_events: max_events.max(1),
        }
    }

    /// A target for an object's apiVersion/kind/namespace (test-side writes).
    pub(crate) fn target_for(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Target {
        let info = self.registry.by_kind(api_version, kind);
        let (_, version) = crate::resources::split_api_version(api_version);
        let namespace = match info.namespaced {
            Some(false) => None,
            _ => namespace.filter(|n| !n.is_empty()).map(String::from),
        };
        Target {
            info,
            version,
            namespace,
        }
    }

    /// An unregistered resource learns its kind from the first object written to it.
    fn learn(&mut self, t: &Target, body: &Value) -> Target {
        let mut t = t.clone();
        if t.info.guessed {
            if let Some(kind) = body.get("kind").and_then(Value::as_str) {
                self.registry.learn_kind(&t.info.gr(), kind);
                t.info.kind = kind.to_string();
                t.info.guessed = false;
            }
        }
        t
    }

    fn lookup(&self, t: &Target, name: &str) -> Option<Arc<Value>> {
        self.objects.get(&t.info.gr())?.get(&t.key(name)).cloned()
    }

    /// The object as served at the target's version.
    pub(crate) fn view(t: &Target, obj: &Value) -> Value {
        let mut v = obj.clone();
        let av = t.api_version();
        if v.get("apiVersion").and_then(Value::as_str) != Some(av.as_str()) {
            v["apiVersion"] = json!(av);
        }
        v
    }

    fn new_uid(&mut self) -> String {
        let n = self.next_uid;
        self.next_uid += 1;
        format!("{:08x}-fa4e-4000-8000-{n:012x}", self.uid_seed)
    }

    fn push_event(
        &mut self,
        t: &Target,
        ty: EventType,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        self.history.push_back(Arc::new(Event {
            rv: self.rv,
            gr: t.info.gr(),
            namespace: meta_str(&object, "namespace")
                .unwrap_or_default()
                .to_string(),
            ty,
            object,
            old,
        }));
        while self.history.len() > self.max_events {
            if let Some(e) = self.history.pop_front() {
                self.window_start = e.rv;
            }
        }
    }

    /// Events after `cursor`, or `None` when the window no longer reaches back that far.
    pub(crate) fn events_after(&self, cursor: u64) -> Option<Vec<Arc<Event>>> {
        if cursor < self.window_start {
            return None;
        }
        let i = self.history.partition_point(|e| e.rv <= cursor);
        Some(self.history.range(i..).cloned().collect())
    }

    /// Forget all history: watches from any resourceVersion before now get 410 Gone.
    pub(crate) fn expire(&mut self) {
        self.history.clear();
        self.window_start = self.rv;
    }

    /// Current objects of a target (all namespaces when it has none), with the current RV.
    pub(crate) fn snapshot(&self, t: &Target, sel: &Selectors) -> (u64, Vec<Arc<Value>>) {
        let items = self
            .objects
            .get(&t.info.gr())
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
                    .filter(|(_, o)| sel.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        (self.rv, items)
    }

    pub(crate) fn get(&self, t: &Target, name: &str) -> Result<Value, ApiError> {
        self.lookup(t, name)
            .map(|o| Self::view(t, &o))
            .ok_or_else(|| t.not_found(name))
    }

    pub(crate) fn list(
        &self,
        t: &Target,
        sel: &Selectors,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<Value, ApiError> {
        let (snapshot, after) = match cont.filter(|c| !c.is_empty()) {
            None => (self.rv, None),
            Some(c) => {
                let mut parts = c.splitn(3, '/');
                let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(ApiError::bad_request(format!(
                        "invalid continue token {c:?}"
                    )));
                };
                let rv: u64 = rv
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid continue token {c:?}")))?;
                if rv < self.window_start {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns.to_string(), name.to_string())))
            }
        };
        // Keys are (namespace, name): start at the namespace, or just after the last key served.
        let start = match (&after, &t.namespace) {
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(ns)) => Bound::Included((ns.clone(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let mut matching = self
            .objects
            .get(&t.info.gr())
            .into_iter()
            .flat_map(|m| m.range((start.clone(), Bound::Unbounded)))
            .take_while(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
            .filter(|(_, o)| sel.matches(o));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for (k, o) in matching.by_ref().take(limit) {
            items.push(Self::view(t, o));
            last = Some(k);
        }
        let mut metadata = json!({"resourceVersion": snapshot.to_string()});
        if matching.next().is_some() {
            if let Some((ns, name)) = last {
                metadata["continue"] = json!(format!("{snapshot}/{ns}/{name}"));
            }
        }
        Ok(json!({
            "kind": format!("{}List", t.info.kind),
            "apiVersion": t.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Sets identity and system metadata on an object about to be written.
    fn finalize_meta(&mut self, t: &Target, name: &str, old: Option<&Value>, new: &mut Value) {
        if !new.is_object() {
            *new = Value::Object(Map::new());
        }
        new["apiVersion"] = json!(t.api_version());
        new["kind"] = json!(t.info.kind);
        let namespaced = t.namespaced();
        let ns = t.ns_key();
        let generation = match old {
            Some(o) => {
                let g = o
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                g + i64::from(spec_changed(o, new))
            }
            None => 1,
        };
        let uid = match old {
            Some(_) => None,
            None => Some(self.new_uid()),
        };
        let meta = meta_mut(new);
        meta.insert("name".into(), json!(name));
        if namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.remove("generateName");
        meta.insert("generation".into(), json!(generation));
        match old {
            Some(o) => {
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "resourceVersion",
                ] {
                    match o.get("metadata").and_then(|m| m.get(k)) {
                        Some(v) => meta.insert(k.into(), v.clone()),
                        None => meta.remove(k),
                    };
                }
            }
            None => {
                meta.insert("uid".into(), json!(uid));
                meta.insert("creationTimestamp".into(), json!(time::now()));
                for k in [
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "resourceVersion",
                ] {
                    meta.remove(k);
                }
            }
        }
    }

    /// Commits `new` (or nothing, for a no-op), returning the stored object and whether it changed.
    fn store_write(
        &mut self,
        t: &Target,
        name: &str,
        old: Option<Arc<Value>>,
        mut new: Value,
        dry_run: bool,
    ) -> (Value, bool) {
        if let Some(o) = &old {
            if same_object(o, &new) {
                return (Self::view(t, o), false);
            }
        }
        let finalizers_done = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if meta_str(&new, "deletionTimestamp").is_some() && finalizers_done {
            return (self.remove(t, name, new, dry_run), true);
        }
        if dry_run {
            return (Self::view(t, &new), true);
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let arc = Arc::new(new);
        self.objects
            .entry(t.info.gr())
            .or_default()
            .insert(t.key(name), arc.clone());
        let ty = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.push_event(t, ty, arc.clone(), old);
        (Self::view(t, &arc), true)
    }

    fn remove(&mut self, t: &Target, name: &str, mut last: Value, dry_run: bool) -> Value {
        if dry_run {
            return Self::view(t, &last);
        }
        let old = self
            .objects
            .get_mut(&t.info.gr())
            .and_then(|m| m.remove(&t.key(name)));
        self.rv += 1;
        meta_mut(&mut last).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let arc = Arc::new(last);
        self.push_event(t, EventType::Deleted, arc.clone(), old);
        Self::view(t, &arc)
    }

    pub(crate) fn create(
        &mut self,
        t: &Target,
        body: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        check_identity(t, None, &body)?;
        let t = &self.learn(t, &body);
        if t.namespaced() && t.namespace.is_none() {
            return Err(ApiError::bad_request(
                "the namespace of the object is required",
            ));
        }
        if meta_str(&body, "resourceVersion").is_some() {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (meta_str(&body, "name"), meta_str(&body, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) => {
                let n = self.next_uid;
                format!("{prefix}{:05x}", (n * 2_654_435_761) & 0xfffff)
            }
            (None, None) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        if self.lookup(t, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.info.qualified()),
            )
            .with_details(json!({"name": name, "group": t.info.group, "kind": t.info.plural})));
        }
        let mut new = restrict(None, body, opts.scope);
        record_update(None, &mut new, &opts, &t.api_version());
        self.finalize_meta(t, &name, None, &mut new);
        Ok(self.store_write(t, &name, None, new, opts.dry_run).0)
    }

    pub(crate) fn replace(
        &mut self,
        t: &Target,
        name: &str,
        body: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        check_identity(t, Some(name), &body)?;
        let t = &self.learn(t, &body);
        let old = self.lookup(t, name).ok_or_else(|| t.not_found(name))?;
        if let Some(rv) = meta_str(&body, "resourceVersion") {
            if Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(t.conflict(name));
            }
        }
        let mut new = restrict(Some(&old), body, opts.scope);
        record_update(Some(&old), &mut new, &opts, &t.api_version());
        self.finalize_meta(t, name, Some(&old), &mut new);
        Ok(self.store_write(t, name, Some(old), new, opts.dry_run).0)
    }

    pub(crate) fn patch(
        &mut self,
        t: &Target,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let old = self.lookup(t, name).ok_or_else(|| t.not_found(name))?;
        let mut computed = (*old).clone();
        match kind {
            PatchKind::Merge | PatchKind::Strategic => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                fields::merge_patch(&mut computed, patch);
            }
            PatchKind::Json => fields::json_patch(&mut computed, patch).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
            })?,
        }
        if meta_str(&computed, "resourceVersion") != meta_str(&old, "resourceVersion")
            && meta_str(&computed, "resourceVersion").is_some()
        {
            return Err(t.conflict(name));
        }
        let mut new = restrict(Some(&old), computed, opts.scope);
        record_update(Some(&old), &mut new, &opts, &t.api_version());
        self.finalize_meta(t, name, Some(&old), &mut new);
        Ok(self.store_write(t, name, Some(old), new, opts.dry_run).0)
    }

    /// Server-side apply. Returns the object and whether it was created.
    pub(crate) fn apply(
        &mut self,
        t: &Target,
        name: &str,
        cfg: Value,
        force: bool,
        opts: WriteOpts,
    ) -> Result<(Value, bool), ApiError> {
        check_identity(t, Some(name), &cfg)?;
        if cfg.get("apiVersion").and_then(Value::as_str).is_none()
            || cfg.get("kind").and_then(Value::as_str).is_none()
        {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply configuration",
            ));
        }
        let t = &self.learn(t, &cfg);
        if t.namespaced() && t.namespace.is_none() {
            return Err(ApiError::bad_request(
                "the namespace of the object is required",
            ));
        }
        let old = self.lookup(t, name);
        if opts.scope == Scope::Status && old.is_none() {
            return Err(t.not_found(name));
        }
        if let Some(rv) = meta_str(&cfg, "resourceVersion") {
            if old.as_ref().and_then(|o| meta_str(o, "resourceVersion")) != Some(rv) {
                return Err(t.conflict(name));
            }
        }
        let scope = opts.scope;
        let sub = scope.subresource().map(String::from);
        let cfg_leaves = fields::leaves(&cfg, scope);
        let mut es = old.as_deref().map(entries).unwrap_or_default();

        if let Some(o) = &old {
            let mut conflicts: Vec<(usize, Path, Path)> = Vec::new();
            for (i, e) in es.iter().enumerate() {
                if e.manager == opts.manager || e.subresource != sub {
                    continue;
                }
                for q in &e.fields {
                    for p in cfg_leaves.iter().filter(|p| fields::overlaps(p, q)) {
                        let short = if p.len() <= q.len() { p } else { q };
                        let (before, after) = (fields::get(o, short), fields::get(&cfg, short));
                        let both_maps = before.is_some_and(Value::is_object)
                            && after.is_some_and(Value::is_object);
                        if !both_maps && before != after {
                            conflicts.push((i, q.clone(), short.clone()));
                        }
                    }
                }
            }
            conflicts.sort();
            conflicts.dedup();
            if !conflicts.is_empty() {
                if !force {
                    return Err(apply_conflict(&es, &conflicts));
                }
                for (i, q, _) in &conflicts {
                    es[*i].fields.remove(q);
                }
            }
        }

        let mut new = match &old {
            Some(o) => (**o).clone(),
            None => json!({"metadata": {}}),
        };
        let others: Vec<&Path> = es
            .iter()
            .filter(|e| {
                !(e.manager == opts.manager && e.operation == "Apply" && e.subresource == sub)
            })
            .flat_map(|e| e.fields.iter())
            .collect();
        let previous: BTreeSet<Path> = es
            .iter()
            .find(|e| e.manager == opts.manager && e.operation == "Apply" && e.subresource == sub)
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let dropped: Vec<Path> = previous
            .difference(&cfg_leaves)
            .filter(|p| {
                !cfg_leaves.iter().any(|c| fields::covers(p, c))
                    && !others.iter().any(|q| fields::covers(p, q))
            })
            .cloned()
            .collect();
        for p in &dropped {
            fields::remove(&mut new, p);
        }
        for p in &cfg_leaves {
            let x = fields::get(&cfg, p).cloned().unwrap_or(Value::Null);
            let keep_existing_map = x.as_object().is_some_and(Map::is_empty)
                && fields::get(&new, p).is_some_and(Value::is_object);
            if !keep_existing_map {
                fields::set(&mut new, p, x);
            }
        }
        let api_version = t.api_version();
        entry_mut(&mut es, opts.manager, "Apply", scope, &api_version).fields = cfg_leaves;
        set_entries(&mut new, &es);
        self.finalize_meta(t, name, old.as_deref(), &mut new);
        let created = old.is_none();
        let (obj, _) = self.store_write(t, name, old, new, opts.dry_run);
        Ok((obj, created))
    }

    pub(crate) fn delete(
        &mut self,
        t: &Target,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<DeleteOutcome, ApiError> {
        let old = self.lookup(t, name).ok_or_else(|| t.not_found(name))?;
        let pre = &options["preconditions"];
        if let Some(uid) = pre["uid"].as_str() {
            if Some(uid) != meta_str(&old, "uid") {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid").unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(rv) = pre["resourceVersion"].as_str() {
            if Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion").unwrap_or_default()
                    ),
                ));
            }
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            return Ok(DeleteOutcome::Deleted(self.remove(
                t,
                name,
                (*old).clone(),
                dry_run,
            )));
        }
        if meta_str(&old, "deletionTimestamp").is_some() {
            return Ok(DeleteOutcome::Pending(Self::view(t, &old)));
        }
        let mut new = (*old).clone();
        let meta = meta_mut(&mut new);
        meta.insert("deletionTimestamp".into(), json!(time::now()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        let (obj, _) = self.store_write(t, name, Some(old), new, dry_run);
        Ok(DeleteOutcome::Pending(obj))
    }

    /// Names of the objects a deletecollection would delete.
    pub(crate) fn names(&self, t: &Target, sel: &Selectors) -> Vec<(String, String)> {
        self.objects
            .get(&t.info.gr())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
            .filter(|(_, o)| sel.matches(o))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn apply_conflict(es: &[Entry], conflicts: &[(usize, Path, Path)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(i, _, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{}\" using {}", es[*i].manager, es[*i].api_version),
                "field": fields::display_path(p),
            })
        })
        .collect();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(i, _, p)| {
            format!(
                "conflict with \"{}\" using {}: {}",
                es[*i].manager,
                es[*i].api_version,
                fields::display_path(p)
            )
        })
        .collect();
    let n = conflicts.len();
    let message = if n == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {n} conflicts: {}", lines.join("; "))
    };
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(manager: &str) -> WriteOpts<'_> {
        WriteOpts {
            manager,
            scope: Scope::All,
            dry_run: false,
        }
    }

    fn cm(labels: Value, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "a", "namespace": "ns", "labels": labels}, "data": data})
    }

    #[test]
    fn maps_are_granular_lists_atomic_and_applies_prune_what_they_drop() {
        let mut s = Store::new(100);
        let t = s.target_for("v1", "ConfigMap", Some("ns"));
        // an empty map owned by a creator does not stop others adding keys to it
        s.create(&t, cm(json!({}), json!({})), opts("creator"))
            .unwrap();
        s.apply(
            &t,
            "a",
            cm(json!({"mine": "1", "x": "1"}), json!({"k": "v"})),
            false,
            opts("me"),
        )
        .unwrap();
        // a key I drop from my configuration is removed; lists are owned whole
        s.apply(
            &t,
            "a",
            cm(json!({"mine": "1"}), json!({"l": "[1]"})),
            false,
            opts("me"),
        )
        .unwrap();
        let o = s.get(&t, "a").unwrap();
        assert_eq!(o["metadata"]["labels"], json!({"mine": "1"}));
        assert_eq!(o["data"], json!({"l": "[1]"}));
        // a key someone else also owns survives my dropping it
        s.apply(
            &t,
            "a",
            cm(json!({"mine": "1"}), json!({"l": "[1]"})),
            false,
            opts("other"),
        )
        .unwrap();
        let rv = s.rv;
        s.apply(&t, "a", cm(json!({}), json!({})), false, opts("me"))
            .unwrap();
        assert_eq!(s.get(&t, "a").unwrap()["data"], json!({"l": "[1]"}));
        assert!(s.rv > rv);
        // an update takes over what it changes; the other manager then conflicts
        s.patch(
            &t,
            "a",
            PatchKind::Merge,
            &json!({"data": {"l": "[2]"}}),
            opts("editor"),
        )
        .unwrap();
        let err = s
            .apply(
                &t,
                "a",
                cm(json!({"mine": "1"}), json!({"l": "[1]"})),
                false,
                opts("other"),
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("\"editor\""), "{}", err.message);
        // history: every commit is one event with increasing resourceVersions
        let evs = s.events_after(1).unwrap();
        assert!(evs.windows(2).all(|w| w[0].rv < w[1].rv));
        assert_eq!(evs.last().unwrap().rv, s.rv);
    }

    #[test]
    fn the_event_window_moves_and_expires() {
        let mut s = Store::new(3);
        let t = s.target_for("v1", "ConfigMap", Some("ns"));
        for i in 0..5 {
            let mut o = cm(json!({}), json!({"i": i.to_string()}));
            o["metadata"]["name"] = json!(format!("c{i}"));
            s.create(&t, o, opts("m")).unwrap();
        }
        assert!(s.events_after(1).is_none());
        assert_eq!(s.events_after(s.window_start).unwrap().len(), 3);
        s.expire();
        assert!(s.events_after(s.rv - 1).is_none());
        assert_eq!(s.events_after(s.rv).unwrap().len(), 0);
    }
}
