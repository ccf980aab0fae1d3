//! HTTP: routing, request classification, the REST verbs and watch streams.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use crate::fields::Scope;
use crate::log::{Failure, RequestRecord, Verb};
use crate::resources::api_version;
use crate::selector::Selectors;
use crate::status::ApiError;
use crate::store::{DeleteOutcome, Event, EventType, PatchKind, Store, Target, WriteOpts};
use crate::{lock, OpenWatch, Shared};

pub(crate) type Body = BoxBody<Bytes, io::Error>;

/// Accepts connections until aborted; aborting drops (and so closes) every connection.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn full(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        serde_json::to_vec(v).expect("JSON values serialize"),
    )
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn failure_response(f: &Failure) -> Response<Body> {
    let err = match f {
        Failure::Conflict => ApiError::new(
            409,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your \
             changes to the latest version and try again (injected)",
        ),
        Failure::TooManyRequests { retry_after_secs } => {
            let e = ApiError::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later. (injected)",
            )
            .with_details(json!({"retryAfterSeconds": retry_after_secs}));
            let mut r = error_response(&e);
            r.headers_mut().insert(
                RETRY_AFTER,
                retry_after_secs.to_string().parse().expect("digits"),
            );
            return r;
        }
        Failure::InternalError => ApiError::new(
            500,
            "InternalError",
            "Internal error occurred: injected fault",
        ),
        Failure::ServiceUnavailable => ApiError::new(
            503,
            "ServiceUnavailable",
            "The service is unavailable (injected)",
        ),
        Failure::Gone => {
            ApiError::new(410, "Expired", "The resource version is too old (injected)")
        }
        Failure::Status {
            code,
            reason,
            message,
        } => ApiError::new(*code, reason, message.clone()),
        Failure::CloseConnection | Failure::EmptyList => unreachable!("handled by the caller"),
    };
    error_response(&err)
}

enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources {
        group: String,
        version: String,
    },
    Resource {
        group: String,
        version: String,
        plural: String,
        namespace: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
    Unknown,
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let r = |plural: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Route::Resource {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            sub: sub.map(String::from),
        }
    };
    match rest {
        [] => Route::Resources {
            group: group.into(),
            version: version.into(),
        },
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            r("namespaces", None, Some(ns), Some(sub))
        }
        ["namespaces", ns, plural] => r(plural, Some(ns), None, None),
        ["namespaces", ns, plural, name] => r(plural, Some(ns), Some(name), None),
        ["namespaces", ns, plural, name, sub] => r(plural, Some(ns), Some(name), Some(sub)),
        [plural] => r(plural, None, None, None),
        [plural, name] => r(plural, None, Some(name), None),
        [plural, name, sub] => r(plural, None, Some(name), Some(sub)),
        _ => Route::Unknown,
    }
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::Unknown,
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    };
    let header = |h| {
        parts
            .headers
            .get(h)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let content_type = header(CONTENT_TYPE);
    let route = route(&path);

    let (group, version, resource, namespace, name, sub) = match &route {
        Route::Resource {
            group,
            version,
            plural,
            namespace,
            name,
            sub,
        } => (
            group.clone(),
            version.clone(),
            Some(plural.clone()),
            namespace.clone(),
            name.clone(),
            sub.clone(),
        ),
        Route::Resources { group, version } => {
            (group.clone(), version.clone(), None, None, None, None)
        }
        Route::Group(g) => (g.clone(), String::new(), None, None, None, None),
        _ => Default::default(),
    };
    let is_true = |v: Option<&str>| matches!(v, Some("true" | "1"));
    let verb = match (&parts.method, resource.is_some(), name.is_some()) {
        (&Method::GET, true, false) if is_true(param("watch")) => Verb::Watch,
        (&Method::GET, true, false) => Verb::List,
        (&Method::GET, ..) => Verb::Get,
        (&Method::POST, ..) => Verb::Create,
        (&Method::PUT, ..) => Verb::Update,
        (&Method::PATCH, ..) if content_type.starts_with("application/apply-patch") => Verb::Apply,
        (&Method::PATCH, ..) => Verb::Patch,
        (&Method::DELETE, _, true) => Verb::Delete,
        (&Method::DELETE, ..) => Verb::DeleteCollection,
        _ => Verb::Get,
    };
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    let dry_run = param("dryRun") == Some("All")
        || body_json
            .as_ref()
            .and_then(|b| b.get("dryRun"))
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    let field_manager = param("fieldManager").map(String::from);
    let mut record = RequestRecord {
        seq: 0,
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        verb,
        group,
        version,
        resource,
        subresource: sub,
        namespace,
        name,
        field_manager: field_manager.clone(),
        dry_run,
        code: 0,
        injected: false,
    };

    let latency = lock(&shared.faults).latency(&record);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut fault = lock(&shared.faults).take(&record);
    let empty_list = fault == Some(Failure::EmptyList);
    if empty_list {
        record.injected = true;
        fault = None;
    }
    if let Some(f) = fault {
        record.injected = true;
        if f == Failure::CloseConnection {
            shared.log(record);
            return Err(io::Error::other("injected fault: connection closed"));
        }
        let resp = failure_response(&f);
        record.code = resp.status().as_u16();
        shared.log(record);
        return Ok(resp);
    }

    let manager = field_manager.unwrap_or_else(|| {
        let ua = header(USER_AGENT);
        match ua.split('/').next() {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => "unknown".into(),
        }
    });

    let resp = match route {
        Route::Version => json_response(
            200,
            &json!({
                "major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "gitCommit": "fake",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        Route::Health => full(StatusCode::OK, b"ok".to_vec()),
        Route::CoreVersions => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]}),
        ),
        Route::Groups => {
            let st = lock(&shared.store);
            let mut groups: Vec<Value> = Vec::new();
            let mut names: Vec<&str> = st
                .registry
                .all()
                .map(|i| i.group.as_str())
                .filter(|g| !g.is_empty())
                .collect();
            names.dedup();
            for g in names {
                groups.push(group_json(&st, g));
            }
            json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        Route::Group(g) => {
            let st = lock(&shared.store);
            if st.registry.all().any(|i| i.group == g) {
                json_response(200, &group_json(&st, &g))
            } else {
                error_response(&not_found_path())
            }
        }
        Route::Resources { group, version } => {
            let st = lock(&shared.store);
            let resources: Vec<Value> = st
                .registry
                .all()
                .filter(|i| i.group == group && i.versions.contains(&version))
                .flat_map(|i| {
                    let namespaced = i.namespaced.unwrap_or(true);
                    [
                        json!({"name": i.plural, "singularName": i.kind.to_lowercase(), "namespaced": namespaced,
                               "kind": i.kind, "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}),
                        json!({"name": format!("{}/status", i.plural), "singularName": "", "namespaced": namespaced,
                               "kind": i.kind, "verbs": ["get", "patch", "update"]}),
                    ]
                })
                .collect();
            if resources.is_empty() {
                error_response(&not_found_path())
            } else {
                json_response(
                    200,
                    &json!({"kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": api_version(&group, &version), "resources": resources}),
                )
            }
        }
        Route::Unknown => error_response(&not_found_path()),
        Route::Resource {
            group,
            version,
            plural,
            namespace,
            name,
            sub,
        } => {
            let info = lock(&shared.store)
                .registry
                .by_plural(&group, &version, &plural);
            let target = Target {
                info,
                version,
                namespace,
            };
            let ctx = ResourceRequest {
                target,
                name,
                sub,
                verb,
                params: &params,
                content_type: &content_type,
                body: body_json,
                raw_body_empty: body.is_empty(),
                manager: &manager,
                dry_run,
                empty_list,
            };
            match resource_request(&shared, ctx, &mut record) {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
    };
    if record.code == 0 {
        record.code = resp.status().as_u16();
    }
    shared.log(record);
    Ok(resp)
}

fn group_json(st: &Store, g: &str) -> Value {
    let versions: Vec<String> = st
        .registry
        .all()
        .filter(|i| i.group == g)
        .flat_map(|i| i.versions.iter().cloned())
        .fold(Vec::new(), |mut acc, v| {
            if !acc.contains(&v) {
                acc.push(v);
            }
            acc
        });
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": gvs,
           "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null)})
}

struct ResourceRequest<'a> {
    target: Target,
    name: Option<String>,
    sub: Option<String>,
    verb: Verb,
    params: &'a [(String, String)],
    content_type: &'a str,
    body: Option<Value>,
    raw_body_empty: bool,
    manager: &'a str,
    dry_run: bool,
    /// Answer a LIST with no items ([`Failure::EmptyList`]).
    empty_list: bool,
}

impl ResourceRequest<'_> {
    fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> Result<Value, ApiError> {
        self.body.clone().ok_or_else(|| {
            ApiError::bad_request(
                "the request body is not valid JSON (YAML bodies are not supported)",
            )
        })
    }

    fn selectors(&self) -> Result<Selectors, ApiError> {
        Selectors::parse(self.param("labelSelector"), self.param("fieldSelector"))
            .map_err(ApiError::bad_request)
    }
}

fn resource_request(
    shared: &Arc<Shared>,
    req: ResourceRequest,
    record: &mut RequestRecord,
) -> Result<Response<Body>, ApiError> {
    let t = &req.target;
    match (t.info.namespaced, &t.namespace) {
        (Some(false), Some(_)) => return Err(not_found_path()),
        (Some(true), None) if req.name.is_some() => return Err(not_found_path()),
        (Some(true), None) if matches!(req.verb, Verb::Create | Verb::DeleteCollection) => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ))
        }
        _ => {}
    }
    let scope = match req.sub.as_deref() {
        None => Scope::Main,
        Some("status") => Scope::Status,
        Some(_) => return Err(not_found_path()),
    };
    let opts = WriteOpts {
        manager: req.manager,
        scope,
        dry_run: req.dry_run,
    };
    let name = req.name.as_deref().unwrap_or_default();
    match req.verb {
        Verb::Get => Ok(json_response(200, &lock(&shared.store).get(t, name)?)),
        Verb::List => {
            let sel = req.selectors()?;
            let limit = req.param("limit").and_then(|l| l.parse().ok());
            let mut list = lock(&shared.store).list(t, &sel, limit, req.param("continue"))?;
            if req.empty_list {
                list["items"] = json!([]);
                list["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("continue"));
            }
            Ok(json_response(200, &list))
        }
        Verb::Watch => start_watch(shared, &req, record),
        Verb::Create => {
            let body = req.body()?;
            let obj = shared.write(|s| s.create(t, body, opts))?;
            Ok(json_response(201, &obj))
        }
        Verb::Update => {
            let body = req.body()?;
            let obj = shared.write(|s| s.replace(t, name, body, opts))?;
            Ok(json_response(200, &obj))
        }
        Verb::Patch => {
            let kind = match req.content_type.split(';').next().unwrap_or_default().trim() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/json-patch+json" => PatchKind::Json,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                    ))
                }
            };
            let body = req.body()?;
            let obj = shared.write(|s| s.patch(t, name, kind, &body, opts))?;
            Ok(json_response(200, &obj))
        }
        Verb::Apply => {
            if opts.manager.is_empty() || req.param("fieldManager").is_none() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let force = req.param("force") == Some("true");
            let body = req.body()?;
            let (obj, created) = shared.write(|s| s.apply(t, name, body, force, opts))?;
            Ok(json_response(if created { 201 } else { 200 }, &obj))
        }
        Verb::Delete => {
            let options = if req.raw_body_empty {
                Value::Null
            } else {
                req.body()?
            };
            match shared.write(|s| s.delete(t, name, &options, req.dry_run))? {
                DeleteOutcome::Deleted(obj) => Ok(json_response(
                    200,
                    &json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": t.info.group, "kind": t.info.plural,
                                    "uid": obj.pointer("/metadata/uid")},
                    }),
                )),
                DeleteOutcome::Pending(obj) => Ok(json_response(202, &obj)),
            }
        }
        Verb::DeleteCollection => {
            let sel = req.selectors()?;
            let items = shared.write(|s| {
                let mut items = Vec::new();
                for (ns, n) in s.names(t, &sel) {
                    let mut tn = t.clone();
                    tn.namespace = (!ns.is_empty()).then_some(ns);
                    match s.delete(&tn, &n, &Value::Null, req.dry_run) {
                        Ok(DeleteOutcome::Deleted(o) | DeleteOutcome::Pending(o)) => items.push(o),
                        Err(_) => {}
                    }
                }
                items
            });
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", t.info.kind), "apiVersion": t.api_version(),
                        "metadata": {"resourceVersion": shared.resource_version().to_string()}, "items": items}),
            ))
        }
    }
}

/// What one watch delivers.
struct WatchSpec {
    target: Target,
    sel: Selectors,
    bookmarks: bool,
    send_initial: bool,
    timeout: Duration,
    bookmark_interval: Duration,
}

type FrameTx = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut out = format!("{{\"type\":\"{ty}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut out, obj).expect("JSON values serialize");
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn gone(rv: u64, oldest: u64) -> ApiError {
    ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {rv} ({oldest})"),
    )
}

fn start_watch(
    shared: &Arc<Shared>,
    req: &ResourceRequest,
    record: &mut RequestRecord,
) -> Result<Response<Body>, ApiError> {
    let spec = WatchSpec {
        target: req.target.clone(),
        sel: req.selectors()?,
        bookmarks: matches!(req.param("allowWatchBookmarks"), Some("true" | "1")),
        send_initial: matches!(req.param("sendInitialEvents"), Some("true" | "1")),
        timeout: req
            .param("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(shared.options.default_watch_timeout),
        bookmark_interval: shared.options.bookmark_interval,
    };
    let rv = req
        .param("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let from: Option<u64> = match rv {
        Some(rv) if !spec.send_initial => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
        _ => None,
    };
    // Subscribe before reading the store so no commit in between goes unnoticed.
    let rv_rx = shared.rv_tx.subscribe();
    let (cursor, initial) = {
        let st = lock(&shared.store);
        match from {
            Some(n) if n < st.window_start => {
                let err = gone(n, st.window_start);
                drop(st);
                record.code = 410;
                let mut status = err.to_status();
                status["code"] = json!(410);
                return Ok(full(StatusCode::OK, event_line("ERROR", &status).to_vec()));
            }
            Some(n) => (n, Vec::new()),
            None => st.snapshot(&spec.target, &spec.sel),
        }
    };
    let (tx, rx) = mpsc::channel(256);
    let (kill_tx, kill_rx) = oneshot::channel();
    let id = shared.register_watch(OpenWatch {
        record: record.clone(),
        kill: Some(kill_tx),
    });
    tokio::spawn(run_watch(
        shared.clone(),
        id,
        spec,
        cursor,
        initial,
        tx,
        kill_rx,
        rv_rx,
    ));
    let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    Ok(r)
}

/// The watch type of an event for this watch (selector transitions become ADDED/DELETED).
fn event_type(spec: &WatchSpec, e: &Event) -> Option<&'static str> {
    if e.gr != spec.target.info.gr() {
        return None;
    }
    if spec
        .target
        .namespace
        .as_ref()
        .is_some_and(|ns| *ns != e.namespace)
    {
        return None;
    }
    let now = spec.sel.matches(&e.object);
    let before = e.old.as_ref().is_some_and(|o| spec.sel.matches(o));
    match e.ty {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }
}

struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        lock(&self.shared.watches).remove(&self.id);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    shared: Arc<Shared>,
    id: u64,
    spec: WatchSpec,
    mut cursor: u64,
    initial: Vec<Arc<Value>>,
    tx: FrameTx,
    mut kill: oneshot::Receiver<()>,
    mut rv_rx: tokio::sync::watch::Receiver<u64>,
) {
    let _guard = WatchGuard {
        shared: shared.clone(),
        id,
    };
    let t = &spec.target;
    let send = |line: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(line))).await.is_ok() }
    };
    let bookmark = |rv: u64, initial_end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": t.info.kind, "apiVersion": t.api_version(), "metadata": meta}),
        )
    };
    for obj in initial {
        if !send(event_line("ADDED", &Store::view(t, &obj))).await {
            return;
        }
    }
    if spec.send_initial && !send(bookmark(cursor, true)).await {
        return;
    }
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + spec.bookmark_interval,
        spec.bookmark_interval,
    );
    loop {
        let events = lock(&shared.store).events_after(cursor);
        let Some(events) = events else {
            let oldest = lock(&shared.store).window_start;
            let mut status = gone(cursor, oldest).to_status();
            status["code"] = json!(410);
            send(event_line("ERROR", &status)).await;
            return;
        };
        for e in events {
            cursor = e.rv;
            if let Some(ty) = event_type(&spec, &e) {
                if !send(event_line(ty, &Store::view(t, &e.object))).await {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut kill => {
                // An error frame makes hyper abort the connection mid-stream.
                let _ = tx.send(Err(io::Error::other("watch dropped by the test"))).await;
                return;
            }
            _ = tx.closed() => return,
            _ = &mut deadline => return,
            changed = rv_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticks.tick(), if spec.bookmarks => {
                if !send(bookmark(cursor, false)).await {
                    return;
                }
            }
        }
    }
}
