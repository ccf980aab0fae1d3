//! One function per measure. Each returns [`Measure`]s (value, goal, unit, details); the
//! binary runs them in order and writes the table, the JSON and the plots.
//!
//! - P1/P2 [`gateway_cpu`]: five gateway variants interleaved, Envoy CPU per request.
//! - P3 [`bytes_to_sink`]: bytes at our controller vs at the ALS sink per 1M requests.
//! - P4 [`controller_ingest`]: edges/s into the controller's sink over gRPC.
//! - P5 [`convergence`]: file mode, first request to Sidecar file.
//! - P7 [`controller_memory`]: RSS of the real `lazyxds run --kube` holding a 100k-pod mesh
//!   from the fake API server and 1M edges (see [`crate::ctlmem`]).
//! - P6 [`sidecar_memory`]: Envoy memory, full mesh config vs a lazy Sidecar's.
//! - P8 [`wasm_size`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lazyxds_e2e::{free_port, Backend, Controller, Envoy, StartOptions};
use serde_json::{json, Value};

use crate::als::AlsServer;
use crate::gateway::{self, GatewayPorts, Variant};
use crate::ingest::{self, IngestOptions};
use crate::load::{self, LoadGen, Window};
use crate::procfs;
use crate::proxy::CountingProxy;
use crate::report::{fmt_num, Goal, Measure};
use crate::sidecar;
use crate::{median, min_max, progress};

/// Knobs of one run; [`RunConfig::full`] is `make bench`, [`RunConfig::quick`] is
/// `BENCH_QUICK=1` (seconds; checks the harness, not the goals).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub quick: bool,
    /// Requests per second sent to one gateway (fixed, below saturation).
    pub rate: f64,
    pub rounds: usize,
    pub warmup: Duration,
    pub window: Duration,
    /// Source addresses (pods) × services (clusters) = distinct edges.
    pub sources: usize,
    pub services: usize,
    /// P3: how long both gateways take the same load (from a fresh stream).
    pub p3_duration: Duration,
    pub p6_sizes: Vec<usize>,
    pub ingest: IngestOptions,
    /// CPUs for the Envoy under test, and for everything else (load, backends, sinks).
    pub envoy_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    /// Every CPU the run may use (P4, and the P6 sidecars).
    pub all_cpus: Vec<usize>,
}

impl RunConfig {
    pub fn full() -> RunConfig {
        RunConfig {
            quick: false,
            rate: 2000.0,
            // Many short windows: the machine's background load changes on a scale of
            // tens of seconds, so the variants of one round see nearly the same machine.
            rounds: 18,
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(4),
            sources: 100,
            services: 10,
            // 1M requests per gateway at 2,000 req/s: the first report and one refresh at
            // the filter's default interval (300 s).
            p3_duration: Duration::from_secs(500),
            p6_sizes: vec![0, 250, 500, 1000, 2000],
            ingest: IngestOptions {
                streams: 4,
                edges_per_batch: 1000,
                batches_per_stream: 64,
                window: 8,
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(5),
            },
            envoy_cpus: Vec::new(),
            load_cpus: Vec::new(),
            all_cpus: Vec::new(),
        }
    }

    pub fn quick() -> RunConfig {
        RunConfig {
            quick: true,
            rate: 300.0,
            rounds: 1,
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(1),
            p3_duration: Duration::from_secs(2),
            p6_sizes: vec![0, 20],
            ingest: IngestOptions {
                streams: 2,
                batches_per_stream: 4,
                warmup: Duration::from_millis(200),
                measure: Duration::from_millis(500),
                ..RunConfig::full().ingest
            },
            ..RunConfig::full()
        }
    }

    /// The `BENCH_*` environment overrides: `BENCH_RPS`, `BENCH_ROUNDS`, `BENCH_WINDOW_S`,
    /// `BENCH_P3_S`.
    pub fn with_env(mut self) -> Result<RunConfig> {
        fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => v
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
                _ => Ok(None),
            }
        }
        if let Some(r) = var::<f64>("BENCH_RPS")? {
            ensure!(r > 0.0, "BENCH_RPS must be > 0");
            self.rate = r;
        }
        if let Some(r) = var::<usize>("BENCH_ROUNDS")? {
            self.rounds = r.max(1);
        }
        if let Some(s) = var::<f64>("BENCH_WINDOW_S")? {
            self.window = Duration::from_secs_f64(s.max(0.1));
        }
        if let Some(s) = var::<f64>("BENCH_P3_S")? {
            self.p3_duration = Duration::from_secs_f64(s.max(0.5));
        }
        Ok(self)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "rate_rps": self.rate,
            "rounds": self.rounds,
            "warmup_s": self.warmup.as_secs_f64(),
            "window_s": self.window.as_secs_f64(),
            "sources": self.sources,
            "services": self.services,
            "p3_duration_s": self.p3_duration.as_secs_f64(),
            "p6_sizes": self.p6_sizes,
            "ingest": {
                "streams": self.ingest.streams,
                "edges_per_batch": self.ingest.edges_per_batch,
                "window": self.ingest.window,
                "measure_s": self.ingest.measure.as_secs_f64(),
            },
            "envoy_cpus": self.envoy_cpus,
            "load_cpus": self.load_cpus,
        })
    }
}

// ---- P1 / P2 / P3: the gateway --------------------------------------------------------

/// Backends, the real controller, the ALS sink: everything a gateway variant talks to.
#[derive(Debug)]
pub struct Upstreams {
    pub backends: Vec<Backend>,
    /// In file mode on the bench mesh ([`gateway::topology`]), as deployed: it pushes the
    /// namespace table and writes Sidecars.
    pub controller: Controller,
    pub als: AlsServer,
    pub wasm: PathBuf,
    /// The topology file and the Sidecars the controller writes.
    _files: tempfile::TempDir,
}

impl Upstreams {
    pub async fn start(sources: usize, services: usize, wasm: PathBuf) -> Result<Upstreams> {
        let mut backends = Vec::new();
        for i in 0..services {
            backends.push(Backend::start(&gateway::service_cluster(i)).await?);
        }
        let files = tempfile::tempdir()?;
        let topology = files.path().join("topology.yaml");
        std::fs::write(
            &topology,
            gateway::topology(&load::sources(sources), services),
        )
        .with_context(|| format!("writing {}", topology.display()))?;
        let out = files.path().join("sidecars");
        let (topology, out) = (topology.display().to_string(), out.display().to_string());
        let controller = Controller::start_with_args(&["--file", &topology, "--out", &out])
            .await
            .context("starting the controller")?;
        let als = AlsServer::start().await?;
        Ok(Upstreams {
            backends,
            controller,
            als,
            wasm,
            _files: files,
        })
    }

    fn hosts(&self) -> Vec<String> {
        (0..self.backends.len())
            .map(gateway::service_host)
            .collect()
    }

    /// A gateway Envoy of `variant` (one worker, pinned), its filter stream to
    /// `controller_port` and its ALS stream to `als_port`.
    pub async fn gateway(
        &self,
        cfg: &RunConfig,
        variant: Variant,
        gateway_id: &str,
        controller_port: u16,
        als_port: u16,
    ) -> Result<(Envoy, u16)> {
        let backends: Vec<u16> = self.backends.iter().map(Backend::port).collect();
        let listen = free_port()?;
        let config = gateway::bootstrap(
            variant,
            &GatewayPorts {
                listen,
                controller: controller_port,
                als: als_port,
                backends: &backends,
                wasm: &self.wasm,
                gateway_id,
            },
        );
        let text = serde_json::to_string_pretty(&config)?;
        let options = StartOptions {
            cpus: cfg.envoy_cpus.clone(),
        };
        let envoy = Envoy::start_with(&text, 1, &options)
            .await
            .with_context(|| {
                format!(
                    "starting gateway ({}) {}",
                    variant.letter(),
                    variant.label()
                )
            })?;
        Ok((envoy, listen))
    }
}

/// One measured window of one variant.
#[derive(Debug, Clone)]
pub struct WindowStat {
    pub round: usize,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Envoy CPU µs per answered request, from `/proc/<pid>/stat` (the metric).
    pub cpu_us_per_req: f64,
    /// The same from `/proc/<pid>/task/*/schedstat` (ns resolution; cross-check).
    pub cpu_us_per_req_schedstat: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Envoy CPU time / wall time (1.0 = one core).
    pub envoy_core_share: f64,
    /// Busy share of the load generator's CPU (everything not on the Envoy core,
    /// other people's processes included).
    pub load_cpu_busy: f64,
    /// CPU of this process (load generator, backends, sinks) / wall time.
    pub generator_core_share: f64,
    /// The controller process's CPU µs per answered request (schedstat): (c)'s stream
    /// goes there.
    pub controller_cpu_us_per_req: f64,
    /// The ALS sink thread's CPU µs per answered request (schedstat): (d)'s and (e)'s
    /// access logs go there.
    pub sink_cpu_us_per_req: f64,
    pub seconds: f64,
}

impl WindowStat {
    /// P2's whole-system CPU per request (schedstat): the gateway plus the one process
    /// its variant reports to: the controller for the filter, the sink for gRPC ALS.
    pub fn system_cpu_us_per_req(&self) -> f64 {
        self.cpu_us_per_req_schedstat + self.controller_cpu_us_per_req + self.sink_cpu_us_per_req
    }

    fn to_json(&self) -> Value {
        json!({
            "round": self.round,
            "ok": self.ok,
            "errors": self.errors,
            "cpu_us_per_req": self.cpu_us_per_req,
            "cpu_us_per_req_schedstat": self.cpu_us_per_req_schedstat,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "envoy_core_share": self.envoy_core_share,
            "load_cpu_busy": self.load_cpu_busy,
            "generator_core_share": self.generator_core_share,
            "controller_cpu_us_per_req": self.controller_cpu_us_per_req,
            "sink_cpu_us_per_req": self.sink_cpu_us_per_req,
            "system_cpu_us_per_req": self.system_cpu_us_per_req(),
            "seconds": self.seconds,
        })
    }
}

/// Every window of every variant.
#[derive(Debug, Clone, Default)]
pub struct CpuRun {
    pub windows: BTreeMap<Variant, Vec<WindowStat>>,
}

impl CpuRun {
    fn per_req(&self, v: Variant) -> Vec<f64> {
        self.windows
            .get(&v)
            .map(|w| w.iter().map(|s| s.cpu_us_per_req).collect())
            .unwrap_or_default()
    }

    /// Like [`CpuRun::ratios`], from the schedstat cross-check.
    pub fn ratios_schedstat(&self, num: Variant, den: Variant) -> Vec<f64> {
        let get = |v: Variant| -> Vec<f64> {
            self.windows
                .get(&v)
                .map(|w| w.iter().map(|s| s.cpu_us_per_req_schedstat).collect())
                .unwrap_or_default()
        };
        get(num).iter().zip(get(den)).map(|(n, d)| n / d).collect()
    }

    /// Per-round ratios `num / den` of whole-system CPU per request (P2).
    pub fn ratios_system(&self, num: Variant, den: Variant) -> Vec<f64> {
        let get = |v: Variant| -> Vec<f64> {
            self.windows
                .get(&v)
                .map(|w| w.iter().map(WindowStat::system_cpu_us_per_req).collect())
                .unwrap_or_default()
        };
        get(num).iter().zip(get(den)).map(|(n, d)| n / d).collect()
    }

    /// Per-round ratios `num / den` of CPU per request (rounds pair windows measured
    /// minutes apart at most).
    pub fn ratios(&self, num: Variant, den: Variant) -> Vec<f64> {
        self.per_req(num)
            .iter()
            .zip(self.per_req(den))
            .map(|(n, d)| n / d)
            .collect()
    }

    pub fn median_of(&self, v: Variant, f: impl Fn(&WindowStat) -> f64) -> f64 {
        let xs: Vec<f64> = self
            .windows
            .get(&v)
            .map(|w| w.iter().map(&f).collect())
            .unwrap_or_default();
        median(&xs).unwrap_or(f64::NAN)
    }

    pub fn range_of(&self, v: Variant) -> (f64, f64) {
        min_max(&self.per_req(v)).unwrap_or((f64::NAN, f64::NAN))
    }
}

/// Which process besides the gateway a variant's work lands in (P2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Companion {
    None,
    Controller,
    Sink,
}

impl Companion {
    fn of(v: Variant) -> Companion {
        match v {
            Variant::Filter => Companion::Controller,
            Variant::Als | Variant::AlsFile => Companion::Sink,
            Variant::NoFilter | Variant::FilterInert => Companion::None,
        }
    }

    /// CPU ns of the companion so far (0 for none).
    fn cpu_ns(self, up: &Upstreams) -> Result<u64> {
        match self {
            Companion::None => Ok(0),
            Companion::Controller => match up.controller.pid() {
                Some(pid) => procfs::cpu_ns_schedstat(pid),
                None => bail!("the controller is not running"),
            },
            Companion::Sink => up.als.cpu_ns(),
        }
    }
}

async fn measure_window(
    cfg: &RunConfig,
    up: &Upstreams,
    variant: Variant,
    load: &mut LoadGen,
    envoy: &Envoy,
    round: usize,
) -> Result<WindowStat> {
    load.run(cfg.rate, cfg.warmup).await;
    let pid = envoy.pid();
    let companion = Companion::of(variant);
    let c0 = companion.cpu_ns(up)?;
    let load_cpu = cfg.load_cpus.first().copied();
    let busy0 = load_cpu.map(procfs::cpu_jiffies).transpose()?;
    let me = std::process::id();
    let g0 = procfs::cpu_ticks(me)?;
    let (t0, ns0, started) = (
        procfs::cpu_ticks(pid)?,
        procfs::cpu_ns_schedstat(pid)?,
        Instant::now(),
    );
    let w: Window = load.run(cfg.rate, cfg.window).await;
    let (t1, ns1, seconds) = (
        procfs::cpu_ticks(pid)?,
        procfs::cpu_ns_schedstat(pid)?,
        started.elapsed().as_secs_f64(),
    );
    let busy1 = load_cpu.map(procfs::cpu_jiffies).transpose()?;
    let g1 = procfs::cpu_ticks(me)?;
    let companion_us = companion.cpu_ns(up)?.saturating_sub(c0) as f64 / 1e3;
    let tick = procfs::clock_ticks_per_s() as f64;
    let cpu_s = (t1 - t0) as f64 / tick;
    let ok = w.ok.max(1) as f64;
    Ok(WindowStat {
        round,
        ok: w.ok,
        errors: w.errors,
        first_error: w.first_error.clone(),
        cpu_us_per_req: cpu_s * 1e6 / ok,
        cpu_us_per_req_schedstat: ns1.saturating_sub(ns0) as f64 / 1e3 / ok,
        p50_ms: w.latency_ms(0.5),
        p99_ms: w.latency_ms(0.99),
        envoy_core_share: cpu_s / seconds,
        load_cpu_busy: match (busy0, busy1) {
            (Some(a), Some(b)) => b.busy_since(a),
            _ => f64::NAN,
        },
        generator_core_share: (g1 - g0) as f64 / tick / seconds,
        controller_cpu_us_per_req: if companion == Companion::Controller {
            companion_us / ok
        } else {
            0.0
        },
        sink_cpu_us_per_req: if companion == Companion::Sink {
            companion_us / ok
        } else {
            0.0
        },
        seconds,
    })
}

/// P1/P2: every variant's gateway started once, then `rounds` rounds in which each
/// variant gets a warm-up and a measured window at the same fixed rate; the order
/// rotates every round.
pub async fn gateway_cpu(cfg: &RunConfig, up: &Upstreams) -> Result<CpuRun> {
    let mut gateways = Vec::new();
    for v in Variant::ALL {
        let id = format!("bench-{}", v.letter());
        let (envoy, port) = up
            .gateway(cfg, v, &id, up.controller.grpc_port(), up.als.port())
            .await?;
        let load = LoadGen::new(port, &load::sources(cfg.sources), &up.hosts())?;
        gateways.push((v, envoy, load));
    }
    let pids: Vec<String> = gateways
        .iter()
        .map(|(v, e, _)| format!("({}) pid {}", v.letter(), e.pid()))
        .collect();
    progress!("P1/P2 gateways: {}", pids.join(", "));
    progress!(
        "P1/P2: {} gateways up; {} rounds × {} variants × ({:?} warm-up + {:?}) at {} req/s, {} sources × {} services",
        gateways.len(),
        cfg.rounds,
        gateways.len(),
        cfg.warmup,
        cfg.window,
        cfg.rate,
        cfg.sources,
        cfg.services
    );
    let mut run = CpuRun::default();
    let n = gateways.len();
    for round in 0..cfg.rounds {
        for k in 0..n {
            let (v, envoy, load) = &mut gateways[(k + round) % n];
            let s = measure_window(cfg, up, *v, load, envoy, round).await?;
            progress!(
                "P1 round {}/{} ({}) {:<22} {:6.1} µs/req (schedstat {:6.1}), p50 {:.2} ms, p99 {:.2} ms, envoy {:3.0}% of a core, generator {:3.0}% (its CPU {:3.0}% busy), {} ok, {} errors",
                round + 1,
                cfg.rounds,
                v.letter(),
                v.label(),
                s.cpu_us_per_req,
                s.cpu_us_per_req_schedstat,
                s.p50_ms,
                s.p99_ms,
                s.envoy_core_share * 100.0,
                s.generator_core_share * 100.0,
                s.load_cpu_busy * 100.0,
                s.ok,
                s.errors
            );
            run.windows.entry(*v).or_default().push(s);
        }
    }
    // Sanity: the ALS sink got entries, the controller learned edges, nothing failed.
    let als = up.als.counts();
    let edges = up.controller.edges().await?.len();
    let errors: u64 = run.windows.values().flatten().map(|w| w.errors).sum();
    progress!(
        "P1/P2 done: ALS sink {} messages / {} entries / {} distinct (source, authority, cluster); controller knows {} edges; {} failed requests",
        als.messages,
        als.entries,
        up.als.edges(),
        edges,
        errors
    );
    let sent: u64 = run
        .windows
        .values()
        .flatten()
        .map(|w| w.ok + w.errors)
        .sum();
    // A stray reset in a long run is noted (details), not fatal; more is a broken setup.
    if errors > 0 && (cfg.quick || errors * 1000 > sent) {
        let first = run
            .windows
            .values()
            .flatten()
            .find_map(|w| w.first_error.clone())
            .unwrap_or_default();
        bail!("{errors} requests failed (first: {first})");
    }
    ensure!(als.entries > 0, "the ALS sink received no access-log entry");
    ensure!(edges > 0, "the controller learned no edge");
    for (_, envoy, _) in gateways {
        envoy.stop(Duration::from_secs(5)).await;
    }
    Ok(run)
}

fn variant_json(run: &CpuRun) -> Value {
    let mut m = serde_json::Map::new();
    for (v, ws) in &run.windows {
        let (lo, hi) = run.range_of(*v);
        m.insert(
            v.letter().into(),
            json!({
                "label": v.label(),
                "cpu_us_per_req_median": run.median_of(*v, |w| w.cpu_us_per_req),
                "cpu_us_per_req_min": lo,
                "cpu_us_per_req_max": hi,
                "cpu_us_per_req_schedstat_median": run.median_of(*v, |w| w.cpu_us_per_req_schedstat),
                "p50_ms_median": run.median_of(*v, |w| w.p50_ms),
                "p99_ms_median": run.median_of(*v, |w| w.p99_ms),
                "envoy_core_share_median": run.median_of(*v, |w| w.envoy_core_share),
                "load_cpu_busy_median": run.median_of(*v, |w| w.load_cpu_busy),
                "generator_core_share_median": run.median_of(*v, |w| w.generator_core_share),
                "controller_cpu_us_per_req_median": run.median_of(*v, |w| w.controller_cpu_us_per_req),
                "sink_cpu_us_per_req_median": run.median_of(*v, |w| w.sink_cpu_us_per_req),
                "system_cpu_us_per_req_median": run.median_of(*v, WindowStat::system_cpu_us_per_req),
                "windows": ws.iter().map(WindowStat::to_json).collect::<Vec<_>>(),
            }),
        );
    }
    Value::Object(m)
}

fn ratio_json(run: &CpuRun, num: Variant, den: Variant) -> Value {
    let r = run.ratios(num, den);
    let (lo, hi) = min_max(&r).unwrap_or((f64::NAN, f64::NAN));
    let above = r.iter().filter(|x| **x > 1.0).count();
    json!({
        "median": median(&r), "min": lo, "max": hi,
        "rounds_above_1": above,
        "median_schedstat": median(&run.ratios_schedstat(num, den)),
        "per_round": r,
    })
}

pub const P1_NAME: &str = "gateway CPU/request: filter (c) ÷ filter floor (b)";
pub const P2_NAME: &str =
    "whole-system CPU/request: gateway + controller (c) ÷ gateway + ALS sink (d)";

/// P1 and P2 from one interleaved run.
pub fn cpu_measures(run: &CpuRun) -> (Measure, Measure) {
    use Variant::*;
    let ratio = |n, d| median(&run.ratios(n, d)).unwrap_or(f64::NAN);
    let us = |v| run.median_of(v, |w| w.cpu_us_per_req);
    let lat = |v| {
        format!(
            "{} p50/p99 {:.2}/{:.2} ms",
            Variant::letter(v),
            run.median_of(v, |w| w.p50_ms),
            run.median_of(v, |w| w.p99_ms)
        )
    };
    let spread = |n, d| {
        let r = run.ratios(n, d);
        let (lo, hi) = min_max(&r).unwrap_or((f64::NAN, f64::NAN));
        let above = r.iter().filter(|x| **x > 1.0).count();
        format!(
            "per round {lo:.3}..{hi:.3}, above 1 in {above} of {}",
            r.len()
        )
    };
    let abs = format!(
        "c/b {}; c/a {:.3}; Envoy CPU µs/request (median): a {:.1}, b {:.1}, c {:.1}, d {:.1}, e {:.1}; b/a {:.3}, d/a {:.3}, e/a {:.3}, c/e {:.3}; latency {}",
        spread(Filter, FilterInert),
        ratio(Filter, NoFilter),
        us(NoFilter),
        us(FilterInert),
        us(Filter),
        us(Als),
        us(AlsFile),
        ratio(FilterInert, NoFilter),
        ratio(Als, NoFilter),
        ratio(AlsFile, NoFilter),
        ratio(Filter, AlsFile),
        [NoFilter, FilterInert, Filter, Als, AlsFile].map(lat).join(", ")
    );
    let details = json!({
        "metric": "Envoy utime+stime from /proc/<pid>/stat over a measured window / requests answered; median over rounds of per-round ratios",
        "variants": variant_json(run),
        "ratios": {
            "c/b": ratio_json(run, Filter, FilterInert),
            "c/a": ratio_json(run, Filter, NoFilter),
            "b/a": ratio_json(run, FilterInert, NoFilter),
            "c/d": ratio_json(run, Filter, Als),
            "c/e": ratio_json(run, Filter, AlsFile),
            "d/a": ratio_json(run, Als, NoFilter),
            "e/a": ratio_json(run, AlsFile, NoFilter),
        },
    });
    let p1 = Measure::measured(
        "p1",
        P1_NAME,
        ratio(Filter, FilterInert),
        Goal::AtMost(1.05),
        "ratio",
    )
    .with_note(abs)
    .with_details(details.clone());
    let system = run.ratios_system(Filter, Als);
    let (lo, hi) = min_max(&system).unwrap_or((f64::NAN, f64::NAN));
    let sys = |v| run.median_of(v, WindowStat::system_cpu_us_per_req);
    let p2 = Measure::measured(
        "p2",
        P2_NAME,
        median(&system).unwrap_or(f64::NAN),
        Goal::AtMost(1.00),
        "ratio",
    )
    .with_note(format!(
        "whole system per round {lo:.3}..{hi:.3}; CPU µs/request (schedstat, median): c {:.1} = gateway {:.1} + controller {:.1}, d {:.1} = gateway {:.1} + sink {:.1}; gateway only c/d {:.3} ({}); against what the original shipped (e, ALS + stdout log) gateway only c/e = {:.3}",
        sys(Filter),
        run.median_of(Filter, |w| w.cpu_us_per_req_schedstat),
        run.median_of(Filter, |w| w.controller_cpu_us_per_req),
        sys(Als),
        run.median_of(Als, |w| w.cpu_us_per_req_schedstat),
        run.median_of(Als, |w| w.sink_cpu_us_per_req),
        ratio(Filter, Als),
        spread(Filter, Als),
        ratio(Filter, AlsFile)
    ))
    .with_details(json!({
        "see": "p1.details",
        "metric": "per round: (gateway + controller CPU) of (c) ÷ (gateway + ALS sink thread CPU) of (d), per request, from schedstat; median over rounds",
        "system_c/d": {"median": median(&system), "min": lo, "max": hi, "per_round": system},
        "gateway_only_c/d": ratio_json(run, Filter, Als),
        "system_c/e": median(&run.ratios_system(Filter, AlsFile)),
    }));
    (p1, p2)
}

/// P3: fresh gateways (c) and (d) take the same load side by side for `p3_duration`, a
/// counting proxy in front of each sink; bytes (protobuf + 5 per gRPC message) per 1M
/// requests, ALS ÷ ours.
pub async fn bytes_to_sink(cfg: &RunConfig, up: &Upstreams) -> Result<Measure> {
    let ctrl_proxy = Arc::new(CountingProxy::start(up.controller.grpc_port()).await?);
    let als_proxy = Arc::new(CountingProxy::start(up.als.port()).await?);
    let als0 = up.als.counts();
    let (envoy_c, port_c) = up
        .gateway(
            cfg,
            Variant::Filter,
            "bench-p3",
            ctrl_proxy.port(),
            als_proxy.port(),
        )
        .await?;
    let (envoy_d, port_d) = up
        .gateway(
            cfg,
            Variant::Als,
            "bench-p3",
            ctrl_proxy.port(),
            als_proxy.port(),
        )
        .await?;
    let sources = load::sources(cfg.sources);
    let mut load_c = LoadGen::new(port_c, &sources, &up.hosts())?;
    let mut load_d = LoadGen::new(port_d, &sources, &up.hosts())?;
    progress!(
        "P3: gateways (c) and (d) side by side for {:?} at {} req/s each ({} edges, default refresh interval)",
        cfg.p3_duration,
        cfg.rate,
        cfg.sources * cfg.services
    );
    let started = Instant::now();
    let every = Duration::from_secs(if cfg.quick { 1 } else { 10 });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let (c, d) = (ctrl_proxy.clone(), als_proxy.clone());
        tokio::spawn(async move {
            let mut timeline: Vec<(f64, u64, u64)> = Vec::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop_rx.changed() => break timeline,
                }
                let (c, d) = (c.counts().up, d.counts().up);
                let t = started.elapsed().as_secs_f64();
                progress!(
                    "P3 t={t:>4.0}s: controller {} B in {} msgs, ALS {} B in {} msgs",
                    fmt_num(c.grpc_bytes as f64),
                    c.grpc_messages,
                    fmt_num(d.grpc_bytes as f64),
                    d.grpc_messages
                );
                timeline.push((t, c.grpc_bytes, d.grpc_bytes));
            }
        })
    };
    let (wc, wd) = tokio::join!(
        load_c.run(cfg.rate, cfg.p3_duration),
        load_d.run(cfg.rate, cfg.p3_duration)
    );
    // Let the last ALS buffer (1 s flush) and the filter's last batch (20 ms) arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(true);
    let timeline = sampler.await.unwrap_or_default();
    let (c, d) = (ctrl_proxy.counts(), als_proxy.counts());
    let als = up.als.counts();
    let stats_c = lazyxds_stats(&envoy_c).await;
    let stats_d = grpc_log_stats(&envoy_d).await;
    envoy_c.stop(Duration::from_secs(5)).await;
    envoy_d.stop(Duration::from_secs(5)).await;
    ensure!(
        wc.errors == 0 && wd.errors == 0,
        "P3 requests failed: {} / {} ({:?})",
        wc.errors,
        wd.errors,
        wc.first_error.or(wd.first_error)
    );
    ensure!(
        c.up.grpc_messages > 0,
        "no gRPC message reached the controller"
    );
    ensure!(
        d.up.grpc_messages > 0,
        "no gRPC message reached the ALS sink"
    );
    ensure!(
        c.parse_errors == 0 && d.parse_errors == 0,
        "the counting proxy could not parse HTTP/2"
    );
    let per_m = |bytes: u64, reqs: u64| bytes as f64 * 1e6 / reqs.max(1) as f64;
    let ours = per_m(c.up.grpc_bytes, wc.ok);
    let theirs = per_m(d.up.grpc_bytes, wd.ok);
    let edges = (cfg.sources * cfg.services) as f64;
    let refresh_s = lazyxds_filter_core::Config::default().refresh_interval_s as f64;
    let req_per_edge_per_refresh = cfg.rate * refresh_s / edges;
    let value = theirs / ours;
    // The first report is done within the first sample; what follows is refreshes (one
    // per edge per refresh interval): project the ratio a long run at this rate converges
    // to.
    let first_report = timeline.first().map_or(c.up.grpc_bytes, |x| x.1);
    let refreshes = ((cfg.p3_duration.as_secs_f64() - 1.0) / refresh_s).floor();
    let per_refresh =
        (refreshes >= 1.0).then(|| c.up.grpc_bytes.saturating_sub(first_report) as f64 / refreshes);
    let steady = per_refresh
        .filter(|b| *b > 0.0)
        .map(|b| theirs / 1e6 * cfg.rate * refresh_s / b);
    let mut note = format!(
        "per 1M requests: ALS {} B ({:.0} B/request, {} msgs), filter {} B ({} msgs: first report {} B{}); {:.0} s from a fresh stream at {} req/s = {:.0} requests per edge per {:.0} s refresh (the default interval), and the ratio grows with that number",
        fmt_num(theirs),
        theirs / 1e6,
        d.up.grpc_messages,
        fmt_num(ours),
        c.up.grpc_messages,
        fmt_num(first_report as f64),
        per_refresh.map_or(String::new(), |b| format!(", {} B per refresh", fmt_num(b))),
        cfg.p3_duration.as_secs_f64(),
        cfg.rate,
        req_per_edge_per_refresh,
        refresh_s
    );
    if let Some(s) = steady {
        note.push_str(&format!("; steady state at this rate ≈ {}", fmt_num(s)));
    }
    Ok(Measure::measured(
        "p3",
        "bytes to the sink per 1M requests: ALS (d) ÷ filter (c)",
        value,
        Goal::AtLeast(10_000.0),
        "ratio",
    )
    .with_note(note)
    .with_details(json!({
        "counted": "Σ(protobuf + 5-byte gRPC prefix) of every Envoy→sink message, by one byte-counting HTTP/2 proxy in front of each sink",
        "duration_s": started.elapsed().as_secs_f64(),
        "distinct_edges": edges,
        "refresh_interval_s": refresh_s,
        "requests_per_edge_per_refresh": req_per_edge_per_refresh,
        "filter_first_report_bytes": first_report,
        "filter_bytes_per_refresh": per_refresh,
        "steady_state_ratio_at_this_rate": steady,
        "timeline": timeline.iter().map(|(t, c, d)| json!({"t_s": t, "controller_bytes": c, "als_bytes": d})).collect::<Vec<_>>(),
        "filter": {
            "requests": wc.ok, "grpc_bytes": c.up.grpc_bytes, "grpc_messages": c.up.grpc_messages,
            "wire_bytes_up": c.up.raw_bytes, "wire_bytes_down": c.down_raw_bytes,
            "bytes_per_1m_requests": ours, "envoy_stats": stats_c,
        },
        "als": {
            "requests": wd.ok, "grpc_bytes": d.up.grpc_bytes, "grpc_messages": d.up.grpc_messages,
            "wire_bytes_up": d.up.raw_bytes, "wire_bytes_down": d.down_raw_bytes,
            "bytes_per_1m_requests": theirs, "bytes_per_request": theirs / 1e6,
            "sink_counted_bytes": als.bytes - als0.bytes, "sink_entries": als.entries - als0.entries,
            "envoy_stats": stats_d,
        },
    })))
}

async fn stats_matching(envoy: &Envoy, pred: impl Fn(&str) -> bool) -> Value {
    match envoy.stats().await {
        Ok(stats) => Value::Object(
            stats
                .into_iter()
                .filter(|(n, _)| pred(n))
                .map(|(n, v)| (n, json!(v)))
                .collect(),
        ),
        Err(e) => json!({"error": format!("{e:#}")}),
    }
}

async fn lazyxds_stats(envoy: &Envoy) -> Value {
    stats_matching(envoy, |n| n.contains("lazyxds.")).await
}

async fn grpc_log_stats(envoy: &Envoy) -> Value {
    stats_matching(envoy, |n| n.contains("grpc_access_log")).await
}

// ---- P4 -------------------------------------------------------------------------------

/// P4 with the controller's memory sink (swap in the index's sink when it lands: any
/// `lazyxds::sink::EdgeSink` works).
pub async fn controller_ingest(cfg: &RunConfig) -> Result<Measure> {
    let counters = Arc::new(lazyxds::counters::Counters::default());
    let sink = Arc::new(lazyxds::sink::MemoryEdgeSink::new(
        lazyxds::edges::DEFAULT_MAX_EDGES,
        counters.clone(),
    ));
    let o = cfg.ingest;
    progress!(
        "P4: {} gRPC streams of pre-encoded {}-edge batches ({} unacked each) into EdgeSinkService<MemoryEdgeSink>, {:?}",
        o.streams,
        o.edges_per_batch,
        o.window,
        o.measure
    );
    let r = ingest::run(sink.clone(), counters, o).await?;
    ensure!(
        r.server_batches_rejected == 0,
        "the sink rejected {} batches",
        r.server_batches_rejected
    );
    ensure!(r.edges > 0, "no batch was acked");
    let stored = sink.snapshot().len();
    progress!(
        "P4: {} edges/s ({} batches of {} B in {:.1} s; {} distinct edges stored)",
        fmt_num(r.edges_per_s),
        r.batches,
        r.batch_bytes,
        r.elapsed.as_secs_f64(),
        stored
    );
    Ok(Measure::measured(
        "p4",
        "controller ingest over gRPC (memory sink)",
        r.edges_per_s,
        Goal::AtLeast(1_000_000.0),
        "edges/s",
    )
    .with_note(format!(
        "{} streams × {}-edge batches ({} B each), client and server in one process on every CPU; sink = MemoryEdgeSink (the index sink replaces it when it lands)",
        o.streams, o.edges_per_batch, r.batch_bytes
    ))
    .with_details(json!({
        "sink": "lazyxds::sink::MemoryEdgeSink",
        "edges": r.edges, "batches": r.batches, "seconds": r.elapsed.as_secs_f64(),
        "batch_bytes": r.batch_bytes, "distinct_edges_stored": stored,
        "server_edges_received": r.server_edges_received,
    })))
}

// ---- P5 / P7 --------------------------------------------------------------------------

pub const P5_NAME: &str = "convergence: first request → Sidecar written (p99)";
pub const P7_NAME: &str = "controller RSS at 100k pods / 20k services / 1M edges";
pub const P7B_NAME: &str = "controller restart at 100k pods: writes that shrink a Sidecar";
pub const P7C_NAME: &str = "controller RSS growth after 100 pod replacements/s for 60 s";
/// P7c: what "no growth" allows for (a few pages of allocator state).
pub const P7C_GOAL_MB: f64 = 1.0;

/// P7, P7b and P7c as errors (the run that measures them all failed).
pub fn controller_memory_errors(error: &anyhow::Error) -> Vec<Measure> {
    vec![
        Measure::error("p7", P7_NAME, Goal::AtMost(300.0), "MB", error),
        Measure::error("p7b", P7B_NAME, Goal::AtMost(0.0), "writes", error),
        Measure::error("p7c", P7C_NAME, Goal::AtMost(P7C_GOAL_MB), "MB", error),
    ]
}

/// P5: first request of a new edge at the gateway → Sidecar file written (file mode).
/// The demo topology, the controller with `--file --out`, a gateway with the filter: each
/// (pod, host) pair of the demo traffic sends one request, then the Sidecar files are
/// polled (2 ms) until a new dependency appears. Pairs that add no new dependency (a second
/// pod of the same workload) are not samples.
pub async fn convergence(rounds: usize) -> Result<Measure> {
    use lazyxds_e2e::mesh::{demo_topology_path, demo_traffic, read_sidecar_files, MeshStack};
    let mut samples_ms = Vec::new();
    for _ in 0..rounds.max(1) {
        let out = tempfile::tempdir()?;
        let stack = MeshStack::start(&demo_topology_path(), out.path(), Some(1)).await?;
        let deps = |dir: &Path| -> usize {
            read_sidecar_files(dir).map_or(0, |f| f.values().map(|s| s.deps.len()).sum())
        };
        // The first pass writes the Sidecars with no deps: wait for it.
        let ready = Instant::now() + Duration::from_secs(10);
        while read_sidecar_files(out.path()).map_or(true, |f| f.is_empty()) {
            ensure!(Instant::now() < ready, "no Sidecars written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (ip, host) in demo_traffic() {
            let before = deps(out.path());
            let started = Instant::now();
            let _ = lazyxds_e2e::request(ip, stack.listen_port, host, "/").await;
            let deadline = started + Duration::from_secs(2);
            while Instant::now() < deadline {
                if deps(out.path()) > before {
                    samples_ms.push(started.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    ensure!(!samples_ms.is_empty(), "no new dependency was ever written");
    samples_ms.sort_by(f64::total_cmp);
    let pick = |q: f64| samples_ms[((samples_ms.len() - 1) as f64 * q).round() as usize];
    let (p50, p99) = (pick(0.5), pick(0.99));
    let mut m = Measure::measured("p5", P5_NAME, p99, Goal::AtMost(250.0), "ms");
    m.note = format!(
        "p50 {p50:.1} ms, p99 {p99:.1} ms over {} new dependencies (flush 20 ms, write debounce 50 ms, polled every 2 ms)",
        samples_ms.len()
    );
    m.details = json!({"samples_ms": samples_ms, "p50_ms": p50, "p99_ms": p99});
    Ok(m)
}

/// P7: RSS of the real controller (`lazyxds run --kube`, its own process, the installed
/// Deployment's defaults) after it listed and watched 100k pods / 20k services from the
/// fake API server, took 1M edges over gRPC and wrote every Sidecar and gateway route
/// ([`crate::ctlmem`]). `quick`: 1k pods / 200 services / 10k edges (checks the harness).
pub async fn controller_memory(quick: bool) -> Result<Vec<Measure>> {
    controller_memory_with(quick, |_| {}).await
}

/// [`controller_memory`] with the mesh spec adjusted (the `p7` binary's knobs).
pub async fn controller_memory_with(
    quick: bool,
    adjust: impl FnOnce(&mut crate::ctlmem::MeshSpec),
) -> Result<Vec<Measure>> {
    use crate::ctlmem::{self, MeshSpec};
    let mut spec = if quick {
        MeshSpec::quick()
    } else {
        MeshSpec::full()
    };
    adjust(&mut spec);
    let bin = lazyxds_e2e::paths::lazyxds_bin()?;
    progress!(
        "P7: {} pods / {} services / {} edges in the fake API server and over gRPC, into {}",
        spec.pods(),
        spec.services,
        spec.edges(),
        bin.display()
    );
    let r = ctlmem::run(&bin, &spec).await?;
    let (edges, deps, applies) = (
        r.counter("index_edges"),
        r.counter("index_deps_added"),
        r.counter("writer_applies"),
    );
    let want_deps = (spec.services * spec.deps_per_workload) as u64;
    ensure!(
        edges == r.edges_sent,
        "the index took {edges} of {} edges",
        r.edges_sent
    );
    ensure!(
        deps == want_deps,
        "{deps} deps learned, {want_deps} expected"
    );
    let dropped = r.counter("edges_dropped_store_full");
    let kept = r.edges_sent.saturating_sub(dropped);
    let total_s = r.seeded.seconds + r.sync_s + r.edges_s + r.settle_s;
    let mode = if spec.write {
        "Sidecars and gateway routes written"
    } else {
        "--dry-run"
    };
    let p7 = Measure::measured("p7", P7_NAME, mb(r.rss), Goal::AtMost(300.0), "MB")
        .with_note(format!(
            "against the fake API server (it measures our controller): VmRSS of `lazyxds run --kube` (MB = 10^6 B; peak VmHWM {:.0} MB): {} pods, {} services, {} edges over {} gRPC streams, {} workloads with {} deps, {mode}; {:.0} MB after the mesh alone; /debug/edges kept {kept} edges (--max-edges)",
            mb(r.hwm),
            r.seeded.pods,
            r.seeded.services,
            r.edges_sent,
            spec.streams,
            r.seeded.deployments,
            deps,
            mb(r.rss_after_mesh),
        ))
        .with_details(json!({
            "unit": "MB = 10^6 bytes (VmRSS, VmHWM of /proc/<pid>/status)",
            "rss_bytes": r.rss,
            "hwm_bytes": r.hwm,
            "rss_after_mesh_bytes": r.rss_after_mesh,
            "mesh": {
                "namespaces": r.seeded.namespaces,
                "services": r.seeded.services,
                "deployments": r.seeded.deployments,
                "replica_sets": r.seeded.replica_sets,
                "pods": r.seeded.pods,
                "pod_json_bytes": r.seeded.pod_json_bytes,
                "deps_per_workload": spec.deps_per_workload,
            },
            "edges": {
                "sent": r.edges_sent, "batches": r.batches, "streams": spec.streams,
                "indexed": edges, "deps_learned": deps,
                "kept_for_debug_edges": kept, "dropped_by_debug_store": dropped,
            },
            "writer": {
                "mode": mode,
                "sidecar_applies": applies,
                "passes": r.counter("writer_passes"),
                "watch_events": r.counter("watch_events"),
            },
            // Of everything (pods, services, Sidecars, routes, deps, streams): per pod, and
            // per edge. The RSS change across the edges is not the edges' cost alone: the
            // first writes' transient memory is being given back meanwhile.
            "estimates": {
                "rss_bytes_per_pod_all_state": r.rss as f64 / r.seeded.pods.max(1) as f64,
                "rss_bytes_per_edge_all_state": r.rss as f64 / r.edges_sent.max(1) as f64,
                "rss_change_across_edges_mb": mb(r.rss) - mb(r.rss_after_mesh),
            },
            "seconds": {
                "seed_fake_apiserver": r.seeded.seconds,
                "list_watch_and_first_writes": r.sync_s,
                "edges_acked": r.edges_s,
                "writer_settled": r.settle_s,
                "total": total_s,
            },
            "controller_args": r.controller_args,
            "how": "real binary, kubeconfig to the in-process fake API server (real list/watch/SSA); objects projected by the kube watchers; edges over gRPC like gateway workers (names once per stream, 1,000-edge batches, 8 unacked); measured once every Sidecar in the fake lists its deps and the writer is idle, streams still open",
        }));
    let not_run = |key, name, goal, unit| {
        Measure::pending(
            key,
            name,
            goal,
            unit,
            "not asked for (P7 only, or --dry-run)",
        )
    };
    let p7b = match &r.restart {
        None => not_run("p7b", P7B_NAME, Goal::AtMost(0.0), "writes"),
        Some(Err(e)) => Measure::error("p7b", P7B_NAME, Goal::AtMost(0.0), "writes", &anyhow::anyhow!("{e}")),
        Some(Ok(b)) => Measure::measured("p7b", P7B_NAME, b.shrinking_writes as f64, Goal::AtMost(0.0), "writes")
            .with_note(format!(
                "against the fake API server: a new `lazyxds run --kube` on the cluster P7 left ({} Sidecars with their deps): first pass after {:.1} s, first correct write (a new dep of one workload, sent once the gRPC port accepts) after {:.1} s; {} Sidecar applies; RSS {:.0} MB, peak {:.0} MB",
                b.sidecars, b.first_pass_s, b.first_correct_write_s, b.sidecar_applies, mb(b.rss), mb(b.hwm),
            ))
            .with_details(json!({
                "first_pass_s": b.first_pass_s,
                "first_correct_write_s": b.first_correct_write_s,
                "sidecar_applies": b.sidecar_applies,
                "shrinking_writes": b.shrinking_writes,
                "shrunk_examples": b.shrunk,
                "sidecars": b.sidecars,
                "rss_bytes": b.rss,
                "hwm_bytes": b.hwm,
                "how": "P7's controller stopped (SIGTERM) and a new one started on the same fake API server; a watch of the fake's Sidecars (every stored version) counts versions with fewer egress hosts or fewer lazyxds.io/deps entries than the one before",
            })),
    };
    let p7c = match &r.churn {
        None => not_run("p7c", P7C_NAME, Goal::AtMost(P7C_GOAL_MB), "MB"),
        Some(Err(e)) => Measure::error(
            "p7c",
            P7C_NAME,
            Goal::AtMost(P7C_GOAL_MB),
            "MB",
            &anyhow::anyhow!("{e}"),
        ),
        Some(Ok(c)) => {
            let growth = mb(c.rss_after) - mb(c.rss_before);
            let cpu_us = c.cpu_s * 1e6 / c.replaced.max(1) as f64;
            Measure::measured("p7c", P7C_NAME, growth, Goal::AtMost(P7C_GOAL_MB), "MB")
                .with_note(format!(
                    "against the fake API server, on P7b's controller: {} pods replaced (delete + create, new name and IP) in {:.0} s: {cpu_us:.0} µs of controller CPU per replacement ({} watch events); RSS {:.0} MB before, {:.0} MB at the end of the churn, {:.0} MB {} s after; goal: no growth beyond {P7C_GOAL_MB} MB of allocator pages",
                    c.replaced, c.churn_s, c.watch_events, mb(c.rss_before), mb(c.rss_end_of_churn), mb(c.rss_after),
                    crate::ctlmem::CHURN_SETTLE.as_secs(),
                ))
                .with_details(json!({
                    "replaced": c.replaced,
                    "churn_s": c.churn_s,
                    "controller_cpu_s": c.cpu_s,
                    "cpu_us_per_replacement": cpu_us,
                    "watch_events": c.watch_events,
                    "rss_before_bytes": c.rss_before,
                    "rss_end_of_churn_bytes": c.rss_end_of_churn,
                    "rss_after_bytes": c.rss_after,
                    "hwm_bytes": c.hwm,
                    "settle_s": crate::ctlmem::CHURN_SETTLE.as_secs(),
                }))
        }
    };
    Ok(vec![p7, p7b, p7c])
}

// ---- P6 ------------------------------------------------------------------------------

/// Envoy memory with one configuration.
#[derive(Debug, Clone, Copy)]
pub struct MemSample {
    pub services: usize,
    pub clusters: usize,
    /// `server.memory_allocated` (admin `/memory` `allocated`).
    pub allocated: u64,
    pub heap_size: u64,
    pub rss: u64,
    pub config_bytes: usize,
    pub start_s: f64,
}

impl MemSample {
    fn to_json(self) -> Value {
        json!({
            "services": self.services, "clusters": self.clusters,
            "allocated_mb": mb(self.allocated), "heap_size_mb": mb(self.heap_size),
            "rss_mb": mb(self.rss), "config_bytes": self.config_bytes, "start_s": self.start_s,
        })
    }
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn memory_field(v: &Value, key: &str) -> Result<u64> {
    match &v[key] {
        Value::String(s) => Ok(s.parse()?),
        Value::Number(n) => n.as_u64().context("not an integer"),
        other => bail!("/memory {key} = {other}"),
    }
}

async fn sidecar_sample(
    services: &[sidecar::ServicePort],
    mesh: usize,
    cert: &str,
    key: &str,
    cpus: &[usize],
) -> Result<MemSample> {
    let config = sidecar::bootstrap(services, free_port()?, cert, key);
    let text = serde_json::to_string(&config)?;
    let started = Instant::now();
    // Istio's sidecar default: two workers.
    let envoy = Envoy::start_with(
        &text,
        2,
        &StartOptions {
            cpus: cpus.to_vec(),
        },
    )
    .await
    .with_context(|| format!("starting the sidecar with {} service ports", services.len()))?;
    let start_s = started.elapsed().as_secs_f64();
    // Let the workers settle and the first stats flush happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = lazyxds_e2e::client::get(envoy.admin_port(), "/memory").await?;
    ensure!(r.status == 200, "/memory: {} {}", r.status, r.body);
    let v: Value = serde_json::from_str(&r.body).context("parsing /memory")?;
    let sample = MemSample {
        services: mesh,
        clusters: services.len() + 1,
        allocated: memory_field(&v, "allocated")?,
        heap_size: memory_field(&v, "heap_size")?,
        rss: procfs::rss_bytes(envoy.pid())?,
        config_bytes: text.len(),
        start_s,
    };
    envoy.stop(Duration::from_secs(5)).await;
    Ok(sample)
}

/// P6: full sidecar at every mesh size, and the scoped one.
pub async fn sidecar_memory(
    cfg: &RunConfig,
    testdata: &Path,
) -> Result<(Measure, Vec<MemSample>, MemSample)> {
    let cert = std::fs::read_to_string(testdata.join("workload-cert.pem"))
        .context("reading bench/testdata/workload-cert.pem")?;
    let key = std::fs::read_to_string(testdata.join("workload-key.pem"))
        .context("reading bench/testdata/workload-key.pem")?;
    let cpus = cfg.all_cpus.clone();
    let scoped =
        sidecar_sample(&sidecar::scoped(), sidecar::SCOPED_DEPS, &cert, &key, &cpus).await?;
    progress!(
        "P6 scoped sidecar ({} deps + always kept, {} clusters): allocated {:.1} MB, RSS {:.1} MB",
        sidecar::SCOPED_DEPS,
        scoped.clusters,
        mb(scoped.allocated),
        mb(scoped.rss)
    );
    let mut full = Vec::new();
    for &n in &cfg.p6_sizes {
        let s = sidecar_sample(&sidecar::full(n), n, &cert, &key, &cpus).await?;
        progress!(
            "P6 full sidecar, {n:>4} services ({} clusters, {} KB config): allocated {:.1} MB, RSS {:.1} MB, LIVE in {:.1} s",
            s.clusters,
            s.config_bytes / 1000,
            mb(s.allocated),
            mb(s.rss),
            s.start_s
        );
        full.push(s);
    }
    let last = *full.last().context("no P6 size")?;
    let value = last.allocated as f64 / scoped.allocated as f64;
    let per_service = match full.first() {
        Some(first) if last.services > first.services => {
            (last.allocated as f64 - first.allocated as f64)
                / (last.services - first.services) as f64
        }
        _ => f64::NAN,
    };
    let m = Measure::measured(
        "p6",
        "sidecar memory: full mesh ÷ lazy scoped",
        value,
        Goal::AtLeast(10.0),
        "ratio",
    )
    .with_note(format!(
        "server.memory_allocated at {} services {:.1} MB vs scoped {:.1} MB; RSS {:.1} vs {:.1} MB (ratio {:.1}); ~{:.1} KB allocated per service",
        last.services,
        mb(last.allocated),
        mb(scoped.allocated),
        mb(last.rss),
        mb(scoped.rss),
        last.rss as f64 / scoped.rss as f64,
        per_service / 1e3
    ))
    .with_details(json!({
        "envoy": "1.40, --concurrency 2, Istio-like static config (see bench/src/sidecar.rs)",
        "scoped": scoped.to_json(),
        "full": full.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        "rss_ratio": last.rss as f64 / scoped.rss as f64,
        "allocated_bytes_per_service": per_service,
    }));
    Ok((m, full, scoped))
}

// ---- P8 ------------------------------------------------------------------------------

/// P8: the size of `wasm` (the copy under test), reported as `built` (where it came from).
pub fn wasm_size(wasm: &Path, built: &Path) -> Result<Measure> {
    let size = procfs::file_size(wasm)?;
    let wasm = built;
    Ok(Measure::measured(
        "p8",
        "filter module size (.wasm)",
        size as f64,
        Goal::AtMost(204_800.0),
        "bytes",
    )
    .with_note(format!("{}", wasm.display()))
    .with_details(json!({"path": wasm.display().to_string(), "bytes": size})))
}
