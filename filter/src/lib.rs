//! The lazyxds gateway filter: the proxy-wasm shell around `lazyxds-filter-core`.
//!
//! This file and `abi.rs` are the only code with hostcalls. The module implements the
//! proxy-wasm ABI itself (no SDK dispatcher) and exports only the callbacks it needs: per
//! request Envoy enters the VM twice (request headers, log) instead of seven times. Not
//! even `proxy_on_context_create` is exported (root contexts are made on their first
//! callback), nor `proxy_on_done` / `proxy_on_delete` (a root whose ticks stopped is
//! dropped). Every hostcall's error is handled; a panic would kill the worker's VM. The filter never fails a request
//! because of the controller: it only pauses one that needs the namespace table before the
//! first push, for at most `routing_wait_ms`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abi;
#[cfg(feature = "sdk")]
mod sdk;

use abi::{BufferType, LogLevel};
use lazyxds_filter_core::authority::Authority;
use lazyxds_filter_core::{
    CheckedProperties, CloseReason, Config, Connections, Decision, EdgeCluster, Flows, Peer,
    Reporter, RequestProperties, RequestView, Router,
};
use lazyxds_proto::v1::controller_message::Kind;
use lazyxds_proto::{EDGE_SINK_METHOD, EDGE_SINK_SERVICE};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Stream failures are logged at most this often (an outage closes a stream per backoff).
const LOG_EVERY_MS: u64 = 10_000;
/// Tick of a root that does not report, or that reports and has nothing to send or wait
/// for (see [`set_fast_tick`]): marks it alive, promotes edges due for refresh, exports
/// stats.
const IDLE_TICK_MS: u32 = 1_000;
/// A root silent for this long plus ten of its tick periods was deleted by Envoy (a
/// configuration change replaced it; this module does not export `proxy_on_delete`, which
/// Envoy would also call for every request): its state is dropped.
const DEAD_ROOT_MS: u64 = 60_000;

// Property paths, NUL-separated as the ABI wants them.
const HOST: &[u8] = b"request\0host";
const CLUSTER: &[u8] = b"xds\0cluster_name";
const ROUTE: &[u8] = b"xds\0route_name";
const SOURCE: &[u8] = b"source\0address";
const PRINCIPAL: &[u8] = b"connection\0uri_san_peer_certificate";
const NODE_ID: &[u8] = b"node\0id";
const CONNECTION_ID: &[u8] = b"connection\0id";

// ---- exports ------------------------------------------------------------------------

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(all(target_os = "wasi", not(feature = "sdk")))]
extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor entry point: constructors, then our panic hook.
#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn _initialize() {
    #[cfg(all(target_os = "wasi", not(feature = "sdk")))]
    // SAFETY: called once by the host before any other export.
    unsafe {
        __wasm_call_ctors();
    }
    std::panic::set_hook(Box::new(|info| {
        abi::log(LogLevel::Critical, &format!("lazyxds: panic: {info}"));
    }));
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_vm_start(context_id: u32, _vm_configuration_size: usize) -> bool {
    ensure_root(context_id);
    true
}

/// Root contexts are made on their first callback: the module does not export
/// `proxy_on_context_create`, which Envoy would also call for every request.
fn ensure_root(context_id: u32) {
    with_roots(|roots| {
        if !roots.iter().any(|r| r.context_id == context_id) {
            roots.push(Root::new(context_id));
        }
    });
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    let bytes = match abi::buffer(BufferType::PluginConfiguration, plugin_configuration_size) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(e) => {
            abi::log(
                LogLevel::Error,
                &format!("lazyxds: cannot read the plugin configuration: {e:?}"),
            );
            return false;
        }
    };
    ensure_root(context_id);
    let worker = with_root(context_id, |root| root.configure(&bytes))
        .unwrap_or_else(|| Err(format!("no root context {context_id}")));
    match worker {
        Ok(worker) => {
            WORKERS.with(|workers| {
                if let Ok(mut workers) = workers.try_borrow_mut() {
                    workers.retain(|(id, _)| *id != context_id);
                    workers.push((context_id, worker));
                }
            });
            true
        }
        Err(message) => {
            abi::log(
                LogLevel::Error,
                &format!("lazyxds: {message}; the filter refuses to start"),
            );
            false
        }
    }
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    let Some(now) = abi::now_ms() else { return };
    let due = with_root(context_id, |root| root.on_tick(now)).flatten();
    if let Some((worker, due)) = due {
        resume(context_id, &worker, due);
    }
    FLOWS.with(|flows| {
        if let Ok(mut flows) = flows.try_borrow_mut() {
            flows.sweep(now);
        }
    });
    forget_dead_roots(now);
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, size: usize) {
    let resolved = with_root(context_id, |root| root.on_grpc_message(token, size)).flatten();
    if let Some((worker, decisions)) = resolved {
        resume(context_id, &worker, decisions);
    }
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status_code: u32) {
    with_root(context_id, |root| root.on_grpc_close(token, status_code));
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> u32 {
    const CONTINUE: u32 = 0;
    const PAUSE: u32 = 1;
    match on_request_headers(context_id) {
        Flow::Continue => CONTINUE,
        Flow::Pause => PAUSE,
    }
}

#[cfg_attr(not(feature = "sdk"), no_mangle)]
pub extern "C" fn proxy_on_log(context_id: u32) {
    on_log(context_id);
}

// ---- state --------------------------------------------------------------------------

thread_local! {
    /// Root contexts (one per plugin configuration in this VM). Only root callbacks
    /// borrow it.
    static ROOTS: RefCell<Vec<Root>> = const { RefCell::new(Vec::new()) };
    /// Each configured root's worker state. Request callbacks read this, never `ROOTS`:
    /// they can run inside a root callback (a resumed request may finish synchronously).
    static WORKERS: RefCell<Vec<(u32, Rc<Worker>)>> = const { RefCell::new(Vec::new()) };
    /// Requests between their header and log callbacks.
    static FLOWS: RefCell<Flows> = RefCell::new(Flows::default());
    /// Downstream connections' source and identity, read once per connection.
    static CONNECTIONS: RefCell<Connections> = RefCell::new(Connections::default());
}

fn with_roots<T>(f: impl FnOnce(&mut Vec<Root>) -> T) -> Option<T> {
    ROOTS.with(|roots| roots.try_borrow_mut().ok().map(|mut roots| f(&mut roots)))
}

fn with_root<T>(context_id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    with_roots(|roots| roots.iter_mut().find(|r| r.context_id == context_id).map(f)).flatten()
}

/// The worker requests use: the newest configured root's. A VM has several roots only
/// while a configuration change drains the old one (or when two plugin configurations
/// share a `vm_id`, which the install never does): knowing a request's root would take
/// `proxy_on_context_create`, one more VM entry per request.
fn request_worker() -> Option<Rc<Worker>> {
    WORKERS.with(|workers| workers.try_borrow().ok()?.last().map(|(_, w)| w.clone()))
}

/// Drops roots whose ticks stopped: Envoy deleted them.
fn forget_dead_roots(now: u64) {
    let dead: Vec<u32> = with_roots(|roots| {
        let dead: Vec<u32> = roots
            .iter()
            .filter(|r| {
                r.last_tick_ms > 0
                    && now.saturating_sub(r.last_tick_ms)
                        > DEAD_ROOT_MS + 10 * u64::from(r.tick_period_ms)
            })
            .map(|r| r.context_id)
            .collect();
        roots.retain(|r| !dead.contains(&r.context_id));
        dead
    })
    .unwrap_or_default();
    if dead.is_empty() {
        return;
    }
    WORKERS.with(|workers| {
        if let Ok(mut workers) = workers.try_borrow_mut() {
            workers.retain(|(id, _)| !dead.contains(id));
        }
    });
}

/// State shared by a root context and its requests (same VM, same thread).
struct Worker {
    report: bool,
    reporter: RefCell<Reporter>,
    router: RefCell<Router>,
    /// Time of the last tick: requests use it instead of a clock hostcall each.
    now_ms: Cell<u64>,
    /// Requests seen while the reporter was borrowed (re-entrant callback); counted on tick.
    unrecorded: Cell<u64>,
    /// The tick runs at the flush interval (else at [`IDLE_TICK_MS`]).
    fast_tick: Cell<bool>,
    flush_ms: u32,
}

/// Runs the root's tick at the flush interval while there is something to send or wait
/// for, and at [`IDLE_TICK_MS`] otherwise: at 20 ms an idle tick entered the VM 50 times a
/// second. Switching is a hostcall, made only when the state changes (a new edge, a pause,
/// a stream to open; the tick itself switches back), never on a dedup hit. Works from a
/// request callback too: Envoy sets the tick of the request's root.
fn set_fast_tick(worker: &Worker, fast: bool) {
    if worker.fast_tick.get() == fast {
        return;
    }
    let period = if fast { worker.flush_ms } else { IDLE_TICK_MS };
    if abi::set_tick_period_ms(period).is_ok() {
        worker.fast_tick.set(fast);
    }
}

// ---- requests -----------------------------------------------------------------------

enum Flow {
    Continue,
    Pause,
}

/// Remembers what the log callback needs of this request (bounded; forgetting is
/// harmless).
fn remember(context_id: u32, worker: &Worker, authority: Option<Vec<u8>>, paused: bool) {
    FLOWS.with(|flows| {
        if let Ok(mut flows) = flows.try_borrow_mut() {
            if let Some(flow) = flows.entry(context_id, worker.now_ms.get()) {
                flow.authority = authority;
                flow.paused = paused;
            }
        }
    });
}

/// Routing: rewrite a short authority, refuse an unknown host for REGISTRY_ONLY callers,
/// or pause until the namespace table arrives.
fn on_request_headers(context_id: u32) -> Flow {
    let Some(worker) = request_worker() else {
        return Flow::Continue;
    };
    if !worker.report {
        return Flow::Continue;
    }
    let Some(authority) = abi::request_header(":authority") else {
        return Flow::Continue;
    };
    let decision = {
        let Ok(mut router) = worker.router.try_borrow_mut() else {
            return Flow::Continue;
        };
        if !router.enabled() {
            drop(router);
            remember(context_id, &worker, Some(authority), false);
            return Flow::Continue;
        }
        // This VM serves traffic: it needs the namespace table (main-thread VMs never get
        // here, so they open no idle stream).
        if let Ok(mut reporter) = worker.reporter.try_borrow_mut() {
            reporter.traffic_seen();
            if !worker.fast_tick.get() && reporter.needs_tick() {
                set_fast_tick(&worker, true);
            }
        }
        // Parsed once for the three questions below.
        let form = Authority::parse(&authority);
        // The route Envoy selected for the authority as sent (read before any rewrite).
        let needs_route = router.needs_route_for(form);
        let external = needs_route
            && abi::property(ROUTE).is_some_and(|route| Router::is_external_route(&route));
        if needs_route && !external {
            // A host with a route of its own (an FQDN): routed as sent.
            drop(router);
            remember(context_id, &worker, Some(authority), false);
            return Flow::Continue;
        }
        // Only a short name or an external host is decided by its caller.
        let (principal, source) = if router.needs_caller_for(form, external) {
            (abi::property(PRINCIPAL), abi::property(SOURCE))
        } else {
            (None, None)
        };
        if !worker.fast_tick.get() && !router.has_table() {
            // The request may be paused until `now + routing_wait_ms`: an idle tick's time
            // can be a second old, and the flush tick must run to time the wait out.
            if let Some(now) = abi::now_ms() {
                worker.now_ms.set(now);
            }
        }
        let request = RequestView {
            authority: &authority,
            external,
            principal: principal.as_deref(),
            source: source.as_deref(),
        };
        router.on_parsed_request(context_id, &request, form, worker.now_ms.get())
    };
    match decision {
        Decision::Wait => {
            // The authority may still change: the log callback reads it.
            remember(context_id, &worker, None, true);
            set_fast_tick(&worker, true);
            Flow::Pause
        }
        Decision::Rewrite(rewritten) => {
            // Envoy clears the route cache on a request-header mutation: the router
            // selects the route again for the new authority.
            let _ = abi::set_request_header(":authority", &rewritten);
            remember(context_id, &worker, Some(rewritten.into_bytes()), false);
            Flow::Continue
        }
        Decision::Continue => {
            remember(context_id, &worker, Some(authority), false);
            Flow::Continue
        }
        refuse @ Decision::Refuse(_) => {
            // The local reply may end the request (and call `proxy_on_log`) right here.
            apply(&refuse);
            Flow::Pause
        }
    }
}

/// Reporting, after routing is final (`xds.*` read earlier can be stale after a header
/// rewrite).
fn on_log(context_id: u32) {
    let flow = FLOWS.with(|flows| {
        flows
            .try_borrow_mut()
            .ok()
            .and_then(|mut f| f.take(context_id))
    });
    let Some(worker) = request_worker() else {
        return;
    };
    if !worker.report {
        return;
    }
    let (authority, paused) = flow.map_or((None, false), |f| (f.authority, f.paused));
    if paused {
        if let Ok(mut router) = worker.router.try_borrow_mut() {
            router.forget(context_id);
        }
    }
    let cluster = abi::property(CLUSTER);
    let Some(edge_cluster) = cluster.as_deref().and_then(EdgeCluster::new) else {
        // Requests that are no edge only need the cluster to be counted.
        let props = RequestProperties {
            cluster: cluster.as_deref(),
            ..RequestProperties::default()
        };
        observe(&worker, |reporter, now| reporter.observe(&props, now));
        return;
    };
    let host = authority.or_else(|| abi::property(HOST));
    let read_peer = || Peer::new(abi::property(SOURCE), abi::property(PRINCIPAL));
    let observe_from = |peer: &Peer| {
        let props = CheckedProperties {
            cluster: edge_cluster,
            source_ip: peer.source_ip,
            host: host.as_deref(),
            principal: peer.principal.as_deref(),
        };
        observe(&worker, |reporter, now| {
            reporter.observe_checked(&props, now)
        });
    };
    // The source address and identity are the connection's: read once per connection.
    let connection = abi::property(CONNECTION_ID)
        .as_deref()
        .and_then(Connections::id_of);
    let remembered = connection.and_then(|id| {
        CONNECTIONS.with(|connections| {
            let mut connections = connections.try_borrow_mut().ok()?;
            observe_from(connections.get_or_read(id, read_peer));
            Some(())
        })
    });
    if remembered.is_none() {
        observe_from(&read_peer());
    }
}

/// Counts one request in the worker's reporter (the dedup table).
fn observe(worker: &Worker, count: impl FnOnce(&mut Reporter, u64)) {
    match worker.reporter.try_borrow_mut() {
        Ok(mut reporter) => {
            count(&mut reporter, worker.now_ms.get());
            if !worker.fast_tick.get() && reporter.needs_tick() {
                // A new edge: flushed on the next (fast) tick.
                drop(reporter);
                set_fast_tick(worker, true);
            }
        }
        Err(_) => worker.unrecorded.set(worker.unrecorded.get() + 1),
    };
}

/// Carries out a routing decision on the current (or effective) request; false when the
/// request was answered here and must not be resumed.
fn apply(decision: &Decision) -> bool {
    match decision {
        Decision::Rewrite(authority) => {
            // Envoy clears the route cache on a request-header mutation: the router
            // selects the route again for the new authority.
            let _ = abi::set_request_header(":authority", authority);
            true
        }
        Decision::Refuse(body) => {
            let _ = abi::send_local_response(502, "text/plain; charset=utf-8", body.as_bytes());
            false
        }
        Decision::Continue | Decision::Wait => true,
    }
}

/// Carries out the decisions for paused requests and resumes them, outside any borrow of
/// the root (a resumed request may finish, and log, synchronously). A request that ended
/// meanwhile has no context any more: skipped.
fn resume(root_id: u32, worker: &Worker, decisions: Vec<(u32, Decision)>) {
    if decisions.is_empty() {
        return;
    }
    for (context_id, decision) in decisions {
        if abi::set_effective_context(context_id).is_err() {
            continue;
        }
        // The request is no longer paused; what it is routed as is read when it ends.
        remember(context_id, worker, None, false);
        if apply(&decision) {
            let _ = abi::resume_request();
        }
    }
    let _ = abi::set_effective_context(root_id);
}

// ---- root contexts --------------------------------------------------------------------

/// Paused requests a root callback decided, with their worker: resumed by the caller once
/// the root is no longer borrowed.
type Resumable = (Rc<Worker>, Vec<(u32, Decision)>);

struct Root {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    stream: Option<u32>,
    /// A close that arrived while the reporter was borrowed; handled on the next tick.
    close_missed: bool,
    metrics: Vec<u32>,
    exported: Vec<u64>,
    last_failure_log_ms: u64,
    last_tick_ms: u64,
    tick_period_ms: u32,
}

impl Root {
    fn new(context_id: u32) -> Self {
        Root {
            context_id,
            worker: None,
            stream: None,
            close_missed: false,
            metrics: Vec::new(),
            exported: Vec::new(),
            last_failure_log_ms: 0,
            last_tick_ms: 0,
            tick_period_ms: 0,
        }
    }

    fn configure(&mut self, bytes: &[u8]) -> Result<Rc<Worker>, String> {
        let config = Config::parse(bytes).map_err(|e| e.to_string())?;
        let node_id = abi::property(NODE_ID).and_then(|id| String::from_utf8(id).ok());
        let gateway_id = config.gateway_id(node_id.as_deref());
        let now = abi::now_ms().unwrap_or(0);
        let worker_name = format!("{now}-{}", self.context_id);
        let report = config.report;
        let flush_ms = u32::try_from(config.flush_interval_ms).unwrap_or(u32::MAX);
        // A reporting root starts fast (its stream, the first edges) and idles once
        // there is nothing to do (`on_tick`).
        let tick = if report { flush_ms } else { IDLE_TICK_MS };
        let router = Router::new(&config);
        let reporter = Reporter::new(config, gateway_id, worker_name);
        abi::set_tick_period_ms(tick).map_err(|e| format!("set_tick_period: {e:?}"))?;
        if report {
            self.define_metrics(&reporter, &router);
        }
        let worker = Rc::new(Worker {
            report,
            reporter: RefCell::new(reporter),
            router: RefCell::new(router),
            now_ms: Cell::new(now),
            unrecorded: Cell::new(0),
            fast_tick: Cell::new(report),
            flush_ms,
        });
        self.worker = Some(worker.clone());
        self.last_tick_ms = now;
        // The longest period the tick can have (dead-root detection).
        self.tick_period_ms = tick.max(IDLE_TICK_MS);
        Ok(worker)
    }

    fn define_metrics(&mut self, reporter: &Reporter, router: &Router) {
        self.metrics.clear();
        let fields = reporter.counters().fields();
        let routing = router.counters().fields();
        for (name, _) in fields.iter().chain(routing.iter()) {
            match abi::define_counter(&format!("lazyxds.{name}")) {
                Ok(id) => self.metrics.push(id),
                Err(e) => {
                    abi::log(
                        LogLevel::Warn,
                        &format!("lazyxds: no stats: define_metric {name}: {e:?}"),
                    );
                    self.metrics.clear();
                    return;
                }
            }
        }
        self.exported = vec![0; self.metrics.len()];
    }

    fn export_metrics(&mut self, reporter: &Reporter, router: &Router) {
        let fields = reporter.counters().fields();
        let routing = router.counters().fields();
        for ((id, exported), (_, value)) in self
            .metrics
            .iter()
            .zip(self.exported.iter_mut())
            .zip(fields.iter().chain(routing.iter()))
        {
            if *value > *exported {
                let _ = abi::increment_metric(*id, (*value - *exported) as i64);
                *exported = *value;
            }
        }
    }

    /// Periodic work; returns the paused requests whose wait is over, for the caller to
    /// resume once this root is no longer borrowed.
    fn on_tick(&mut self, now: u64) -> Option<Resumable> {
        self.last_tick_ms = now;
        let worker = self.worker.clone()?;
        worker.now_ms.set(now);
        if !worker.report {
            return None;
        }
        // Paused requests whose wait is over go on without the table.
        let due = match worker.router.try_borrow_mut() {
            Ok(mut router) => router.due(now),
            Err(_) => Vec::new(),
        };
        if let Ok(mut reporter) = worker.reporter.try_borrow_mut() {
            if std::mem::take(&mut self.close_missed) {
                reporter.stream_closed(now, None);
            }
            reporter.counters_mut().requests_unrecorded += worker.unrecorded.take();
            reporter.tick(now);
            if let Some(reason) = reporter.close_reason(now) {
                self.drop_stream(&mut reporter, now, Some(reason));
            }
            self.pump(&mut reporter, now);
            if let Ok(router) = worker.router.try_borrow() {
                self.export_metrics(&reporter, &router);
                let fast = reporter.needs_tick() || router.paused_len() > 0;
                set_fast_tick(&worker, fast);
            };
        }
        Some((worker, due))
    }

    /// A message from the controller; returns paused requests it resolved.
    fn on_grpc_message(&mut self, token: u32, size: usize) -> Option<Resumable> {
        if self.stream != Some(token) {
            return None;
        }
        let worker = self.worker.clone()?;
        let mut reporter = worker.reporter.try_borrow_mut().ok()?;
        let push = match abi::buffer(BufferType::GrpcReceiveBuffer, size) {
            Ok(Some(bytes)) => reporter.on_controller_message(&bytes),
            _ => None,
        };
        // An ack may have opened the window: drain a backlog without waiting for the tick.
        self.pump(&mut reporter, worker.now_ms.get());
        drop(reporter);
        let push = push?;
        let decisions = {
            let mut router = worker.router.try_borrow_mut().ok()?;
            if let Kind::Namespaces(table) = push {
                router.apply_table(table);
            }
            router.resolved()
        };
        Some((worker, decisions))
    }

    fn on_grpc_close(&mut self, token: u32, status_code: u32) {
        if self.stream != Some(token) {
            return;
        }
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.stream = None;
        let now = abi::now_ms().unwrap_or_else(|| worker.now_ms.get());
        let detail = abi::grpc_status_message().unwrap_or_default();
        self.log_failure(
            now,
            &format!("edge stream closed: grpc status {status_code} {detail}"),
        );
        match worker.reporter.try_borrow_mut() {
            Ok(mut reporter) => reporter.stream_closed(now, None),
            Err(_) => self.close_missed = true,
        };
        // Reopen (after the backoff) and resync on the flush tick.
        set_fast_tick(&worker, true);
    }

    /// Closes the stream from our side (timeout, recycle, failed send).
    fn drop_stream(&mut self, reporter: &mut Reporter, now: u64, reason: Option<CloseReason>) {
        if let Some(token) = self.stream.take() {
            let _ = abi::grpc_cancel(token);
        }
        reporter.stream_closed(now, reason);
    }

    /// Opens the stream when there is something to send and sends what the window allows.
    fn pump(&mut self, reporter: &mut Reporter, now: u64) {
        if self.stream.is_none() && reporter.wants_stream(now) {
            let cluster = reporter.config().controller_cluster.clone();
            let authorization = reporter.config().controller_token.bearer();
            let service = lazyxds_filter_core::grpc_service::grpc_service(&cluster);
            match abi::open_grpc_stream(
                &service,
                EDGE_SINK_SERVICE,
                EDGE_SINK_METHOD,
                authorization.as_deref(),
            ) {
                Ok(token) => {
                    let hello = reporter.stream_opened();
                    self.stream = Some(token);
                    if let Err(e) = abi::grpc_send(token, &hello) {
                        reporter.counters_mut().send_failures += 1;
                        self.log_failure(now, &format!("sending hello to {cluster}: {e:?}"));
                        self.drop_stream(reporter, now, None);
                    }
                }
                Err(e) => {
                    reporter.stream_open_failed(now);
                    self.log_failure(
                        now,
                        &format!("opening a gRPC stream on cluster `{cluster}`: {e:?}"),
                    );
                }
            }
        }
        let Some(token) = self.stream else { return };
        while let Some(batch) = reporter.next_batch(now) {
            if let Err(e) = abi::grpc_send(token, &batch) {
                reporter.counters_mut().send_failures += 1;
                self.log_failure(now, &format!("sending a batch: {e:?}"));
                self.drop_stream(reporter, now, None);
                return;
            }
        }
    }

    fn log_failure(&mut self, now: u64, message: &str) {
        if now.saturating_sub(self.last_failure_log_ms) >= LOG_EVERY_MS {
            self.last_failure_log_ms = now;
            abi::log(
                LogLevel::Warn,
                &format!("lazyxds: {message} (edges are kept and re-sent)"),
            );
        }
    }
}
