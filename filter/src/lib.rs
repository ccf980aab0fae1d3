//! The lazyxds gateway filter: the proxy-wasm shell around `lazyxds-filter-core`.
//!
//! This is the only file that makes hostcalls. It calls `proxy_wasm::hostcalls::*`
//! directly and handles every `Err`: the SDK's convenience trait methods unwrap hostcall
//! results, and a panic kills the worker's VM (every later request on it fails until
//! Envoy reloads it). The filter never fails a request because of the controller: it
//! only pauses one that needs the namespace table before the first push, for at most
//! `routing_wait_ms`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lazyxds_filter_core::{
    edge_cluster, CloseReason, Config, Decision, Reporter, RequestProperties, RequestView, Router,
};
use lazyxds_proto::v1::controller_message::Kind;
use lazyxds_proto::{EDGE_SINK_METHOD, EDGE_SINK_SERVICE};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // Replaces the SDK's hook, which unwraps its own log call.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("lazyxds: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| Box::new(Root::new(context_id)));
}}

/// Stream failures are logged at most this often (an outage closes a stream per backoff).
const LOG_EVERY_MS: u64 = 10_000;

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_ms() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    Some(now.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn property(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

/// Carries out a routing decision on the current (or effective) HTTP context; false when
/// the request was answered here and must not be resumed.
fn apply(decision: &Decision) -> bool {
    match decision {
        Decision::Rewrite(authority) => {
            // Envoy clears the route cache on a request-header mutation: the router
            // selects the route again for the new authority.
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                ":authority",
                Some(authority),
            );
            true
        }
        Decision::Refuse(body) => {
            let _ = hostcalls::send_http_response(
                502,
                vec![("content-type", "text/plain; charset=utf-8")],
                Some(body.as_bytes()),
            );
            false
        }
        Decision::Continue | Decision::Wait => true,
    }
}

/// State shared by a worker's root context and its HTTP contexts (same VM, same thread).
struct Worker {
    reporter: RefCell<Reporter>,
    router: RefCell<Router>,
    /// Time of the last tick: requests use it instead of a clock hostcall each.
    now_ms: Cell<u64>,
    /// Requests seen while the reporter was borrowed (re-entrant callback); counted on tick.
    unrecorded: Cell<u64>,
}

struct Root {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    stream: Option<u32>,
    /// A close that arrived while the reporter was borrowed; handled on the next tick.
    close_missed: bool,
    metrics: Vec<u32>,
    exported: Vec<u64>,
    last_failure_log_ms: u64,
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
        }
    }

    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config = Config::parse(bytes).map_err(|e| e.to_string())?;
        let gateway_id = if config.gateway_id.is_empty() {
            property(vec!["node", "id"])
                .and_then(|id| String::from_utf8(id).ok())
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| "unknown".into())
        } else {
            config.gateway_id.clone()
        };
        let now = now_ms().unwrap_or(0);
        let worker = format!("{now}-{}", self.context_id);
        let flush = Duration::from_millis(config.flush_interval_ms);
        let report = config.report;
        let router = Router::new(&config);
        let reporter = Reporter::new(config, gateway_id, worker);
        if report {
            hostcalls::set_tick_period(flush).map_err(|e| format!("set_tick_period: {e:?}"))?;
            self.define_metrics(&reporter, &router);
        }
        self.worker = Some(Rc::new(Worker {
            reporter: RefCell::new(reporter),
            router: RefCell::new(router),
            now_ms: Cell::new(now),
            unrecorded: Cell::new(0),
        }));
        Ok(())
    }

    fn define_metrics(&mut self, reporter: &Reporter, router: &Router) {
        self.metrics.clear();
        let fields = reporter.counters().fields();
        let routing = router.counters().fields();
        for (name, _) in fields.iter().chain(routing.iter()) {
            match hostcalls::define_metric(MetricType::Counter, &format!("lazyxds.{name}")) {
                Ok(id) => self.metrics.push(id),
                Err(e) => {
                    log(
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
                let _ = hostcalls::increment_metric(*id, (*value - *exported) as i64);
                *exported = *value;
            }
        }
    }

    /// Carries out the decisions for paused requests and resumes them. A request that
    /// ended meanwhile has no context any more: skipped.
    fn resume(&self, decisions: Vec<(u32, Decision)>) {
        if decisions.is_empty() {
            return;
        }
        for (context_id, decision) in decisions {
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            if apply(&decision) {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Closes the stream from our side (timeout, recycle, failed send).
    fn drop_stream(&mut self, reporter: &mut Reporter, now: u64, reason: Option<CloseReason>) {
        if let Some(token) = self.stream.take() {
            let _ = hostcalls::cancel_grpc_stream(token);
        }
        reporter.stream_closed(now, reason);
    }

    /// Opens the stream when there is something to send and sends what the window allows.
    fn pump(&mut self, reporter: &mut Reporter, now: u64) {
        if self.stream.is_none() && reporter.wants_stream(now) {
            let cluster = reporter.config().controller_cluster.clone();
            match hostcalls::open_grpc_stream(&cluster, EDGE_SINK_SERVICE, EDGE_SINK_METHOD, vec![])
            {
                Ok(token) => {
                    let hello = reporter.stream_opened();
                    self.stream = Some(token);
                    if let Err(e) = hostcalls::send_grpc_stream_message(token, Some(&hello), false)
                    {
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
            if let Err(e) = hostcalls::send_grpc_stream_message(token, Some(&batch), false) {
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
            log(
                LogLevel::Warn,
                &format!("lazyxds: {message} (edges are kept and re-sent)"),
            );
        }
    }
}

impl Context for Root {
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if self.stream != Some(token_id) {
            return;
        }
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Ok(mut reporter) = worker.reporter.try_borrow_mut() else {
            return;
        };
        let push = match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, message_size) {
            Ok(Some(bytes)) => reporter.on_controller_message(&bytes),
            _ => None,
        };
        // An ack may have opened the window: drain a backlog without waiting for the tick.
        self.pump(&mut reporter, worker.now_ms.get());
        drop(reporter);
        let Some(push) = push else { return };
        let decisions = match worker.router.try_borrow_mut() {
            Ok(mut router) => {
                if let Kind::Namespaces(table) = push {
                    router.apply_table(table);
                }
                router.resolved()
            }
            Err(_) => return,
        };
        self.resume(decisions);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if self.stream != Some(token_id) {
            return;
        }
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.stream = None;
        let now = now_ms().unwrap_or_else(|| worker.now_ms.get());
        let detail = hostcalls::get_grpc_status()
            .ok()
            .and_then(|(_, m)| m)
            .unwrap_or_default();
        self.log_failure(
            now,
            &format!("edge stream closed: grpc status {status_code} {detail}"),
        );
        match worker.reporter.try_borrow_mut() {
            Ok(mut reporter) => reporter.stream_closed(now, None),
            Err(_) => self.close_missed = true,
        };
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("lazyxds: cannot read the plugin configuration: {e:?}"),
                );
                return false;
            }
        };
        match self.configure(&bytes) {
            Ok(()) => true,
            Err(message) => {
                log(
                    LogLevel::Error,
                    &format!("lazyxds: {message}; the filter refuses to start"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(now) = now_ms() else { return };
        worker.now_ms.set(now);
        // Paused requests whose wait is over go on without the table.
        let due = match worker.router.try_borrow_mut() {
            Ok(mut router) => router.due(now),
            Err(_) => Vec::new(),
        };
        self.resume(due);
        let Ok(mut reporter) = worker.reporter.try_borrow_mut() else {
            return;
        };
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
        };
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on it.
        let worker = self.worker.clone().filter(|w| {
            let report = w.reporter.try_borrow().map(|r| r.config().report);
            report.unwrap_or(true)
        });
        Some(Box::new(Flow {
            context_id,
            worker,
            paused: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request: routed (authority rewrite, policy) in `on_http_request_headers`,
/// reported in `on_log`, after routing is final (`xds.*` read earlier can be stale after
/// a header rewrite).
struct Flow {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    /// Paused for the namespace table (the root resumes it).
    paused: bool,
}

impl Context for Flow {}

impl HttpContext for Flow {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        // `request.host` is the `:authority` header.
        let Some(authority) = property(vec!["request", "host"]) else {
            return Action::Continue;
        };
        let decision = {
            let Ok(mut router) = worker.router.try_borrow_mut() else {
                return Action::Continue;
            };
            if !router.enabled() {
                return Action::Continue;
            }
            // This VM serves traffic: it needs the namespace table (main-thread VMs never
            // get here, so they open no idle stream).
            if let Ok(mut reporter) = worker.reporter.try_borrow_mut() {
                reporter.traffic_seen();
            }
            // The route Envoy selected for the authority as sent (read before any rewrite).
            let needs_route = router.needs_route(&authority);
            let external = needs_route
                && property(vec!["xds", "route_name"])
                    .is_some_and(|route| Router::is_external_route(&route));
            if needs_route && !external {
                // A host with a route of its own (an FQDN): routed as sent.
                return Action::Continue;
            }
            let principal = property(vec!["connection", "uri_san_peer_certificate"]);
            let source = property(vec!["source", "address"]);
            let request = RequestView {
                authority: &authority,
                external,
                principal: principal.as_deref(),
                source: source.as_deref(),
            };
            router.on_request(self.context_id, &request, worker.now_ms.get())
        };
        if decision == Decision::Wait {
            self.paused = true;
            return Action::Pause;
        }
        if apply(&decision) {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_log(&mut self) {
        let Some(worker) = &self.worker else { return };
        if self.paused {
            if let Ok(mut router) = worker.router.try_borrow_mut() {
                router.forget(self.context_id);
            }
        }
        let cluster = property(vec!["xds", "cluster_name"]);
        let is_edge = cluster.as_deref().and_then(edge_cluster).is_some();
        // Requests that are no edge only need the cluster to be counted.
        let (source, host, principal) = if is_edge {
            (
                property(vec!["source", "address"]),
                property(vec!["request", "host"]),
                property(vec!["connection", "uri_san_peer_certificate"]),
            )
        } else {
            (None, None, None)
        };
        let props = RequestProperties {
            cluster: cluster.as_deref(),
            source: source.as_deref(),
            host: host.as_deref(),
            principal: principal.as_deref(),
        };
        match worker.reporter.try_borrow_mut() {
            Ok(mut reporter) => reporter.observe(&props, worker.now_ms.get()),
            Err(_) => worker.unrecorded.set(worker.unrecorded.get() + 1),
        }
    }
}
