//! `make bench` (`BENCH_QUICK=1`: `make bench-quick`). See the crate docs and README.
//!
//! Order: P8 (a file size), P4 (in-process, every CPU), P7 (the controller's memory with
//! a 100k-pod mesh, every CPU), then with this process pinned to the load CPU: P1/P2 (five
//! gateways interleaved), then P3 and P6 side by side (P3 counts bytes, P6 reads memory:
//! neither is a CPU measure), then P5. Then the table (stdout), `latest.json` and the SVG
//! plots.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use lazyxds_bench::gateway::Variant;
use lazyxds_bench::measures::{self, RunConfig, Upstreams};
use lazyxds_bench::plot::{self, Bar, Line};
use lazyxds_bench::report::{self, Goal, Measure};
use lazyxds_bench::{procfs, progress};
use serde_json::json;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> ExitCode {
    lazyxds_bench::start_clock();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A private directory for the binaries under test; removed when dropped.
struct Snapshot(PathBuf);

impl Snapshot {
    fn new() -> Result<Snapshot> {
        let dir = std::env::temp_dir().join(format!("lazyxds-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Snapshot(dir))
    }

    fn copy(&self, from: &Path, name: &str) -> Result<PathBuf> {
        let to = self.0.join(name);
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(to)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Returns whether the harness worked (every measure ran or is pending).
fn run() -> Result<bool> {
    let started = Instant::now();
    let quick = is_set("BENCH_QUICK");
    // The machine is shared: ahead of other people's builds, our processes (this one, and
    // the Envoys and controller it starts, which inherit it) see less interference.
    let nice = if quick {
        None
    } else {
        procfs::set_nice(-10).ok().map(|()| -10)
    };
    let root = workspace_root();
    let mut cfg = if quick {
        RunConfig::quick()
    } else {
        RunConfig::full()
    }
    .with_env()?;
    let out_dir = match std::env::var_os("BENCH_OUT").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None if quick => root.join("target/bench-quick"),
        None => root.join("bench/results"),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // The full run measures the release controller; the harness's default is the debug one.
    if std::env::var_os("LAZYXDS_BIN").is_none() && !quick {
        std::env::set_var("LAZYXDS_BIN", root.join("target/release/lazyxds"));
    }
    let envoy = lazyxds_e2e::paths::envoy_bin()?;
    let wasm_built = lazyxds_e2e::paths::wasm_path()?;
    let controller_built = lazyxds_e2e::paths::lazyxds_bin()?;
    if !quick && !controller_built.to_string_lossy().contains("release") {
        progress!(
            "warning: measuring a non-release controller ({})",
            controller_built.display()
        );
    }
    // Private copies: a rebuild in the work tree during the run must not change what is
    // measured halfway.
    let snapshot = Snapshot::new()?;
    let wasm = snapshot.copy(&wasm_built, "lazyxds_filter.wasm")?;
    let controller = snapshot.copy(&controller_built, "lazyxds")?;
    std::env::set_var("LAZYXDS_BIN", &controller);
    let cpus = procfs::allowed_cpus();
    cfg.all_cpus = cpus.clone();
    if cpus.len() >= 2 {
        cfg.envoy_cpus = vec![cpus[0]];
        cfg.load_cpus = cpus[1..].to_vec();
    }
    lazyxds_e2e::set_verbose(false);
    progress!(
        "lazyxds bench ({}): Envoy {}, results to {}",
        if quick {
            "QUICK: checks the harness, not the goals"
        } else {
            "full"
        },
        envoy.display(),
        out_dir.display()
    );
    if cfg.envoy_cpus.is_empty() {
        progress!("only {} CPU(s) available: nothing is pinned", cpus.len());
    } else {
        progress!(
            "Envoy under test pinned to CPU {:?}; load, backends, sinks, controller on {:?}",
            cfg.envoy_cpus,
            cfg.load_cpus
        );
    }

    let mut results: Vec<Measure> = Vec::new();

    // P8.
    results.push(measures::wasm_size(&wasm, &wasm_built).unwrap_or_else(|e| {
        Measure::error(
            "p8",
            "filter module size (.wasm)",
            Goal::AtMost(204_800.0),
            "bytes",
            &e,
        )
    }));

    // P4, on every CPU.
    let p4 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.len().max(2))
        .enable_all()
        .build()?
        .block_on(measures::controller_ingest(&cfg));
    let p4 = p4.unwrap_or_else(|e| {
        Measure::error(
            "p4",
            "controller ingest over gRPC (memory sink)",
            Goal::AtLeast(1e6),
            "edges/s",
            &e,
        )
    });

    // P7, on every CPU (its own controller process and the fake API server it lists).
    let p7 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.len().max(2))
        .enable_all()
        .build()?
        .block_on(measures::controller_memory(quick))
        .unwrap_or_else(|e| measures::controller_memory_errors(&e));

    // Everything else from the load CPU(s); Envoys pin themselves.
    if !cfg.load_cpus.is_empty() {
        procfs::pin_current_thread(&cfg.load_cpus)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let testdata = root.join("bench/testdata");
    let (cpu, p3, p6) = rt.block_on(async {
        let up = Upstreams::start(cfg.sources, cfg.services, wasm.clone()).await?;
        let cpu = measures::gateway_cpu(&cfg, &up).await;
        let (p3, p6) = tokio::join!(
            measures::bytes_to_sink(&cfg, &up),
            measures::sidecar_memory(&cfg, &testdata)
        );
        Ok::<_, anyhow::Error>((cpu, p3, p6))
    })?;

    let mut plots = Vec::new();
    match &cpu {
        Ok(run) => {
            let (p1, p2) = measures::cpu_measures(run);
            results.push(p1);
            results.push(p2);
            let bars: Vec<Bar> = Variant::ALL
                .iter()
                .map(|v| {
                    let (low, high) = run.range_of(*v);
                    Bar {
                        label: format!("({}) {}", v.letter(), v.label()),
                        value: run.median_of(*v, |w| w.cpu_us_per_req),
                        low,
                        high,
                    }
                })
                .collect();
            let p1v = results.iter().find(|m| m.key == "p1").and_then(|m| m.value);
            let p2v = results.iter().find(|m| m.key == "p2").and_then(|m| m.value);
            let path = out_dir.join("p1_p2_gateway_cpu.svg");
            let title = format!(
                "Envoy CPU per request, {} req/s, median of {} rounds (whiskers: min-max): P1 c/b = {:.3}, P2 (whole system) c/d = {:.3}",
                cfg.rate,
                cfg.rounds,
                p1v.unwrap_or(f64::NAN),
                p2v.unwrap_or(f64::NAN)
            );
            plot::bars(&path, &title, "µs of Envoy CPU per request", &bars)?;
            plots.push(path);
        }
        Err(e) => {
            results.push(Measure::error(
                "p1",
                measures::P1_NAME,
                Goal::AtMost(1.05),
                "ratio",
                e,
            ));
            results.push(Measure::error(
                "p2",
                measures::P2_NAME,
                Goal::AtMost(1.0),
                "ratio",
                e,
            ));
        }
    }
    results.push(p3.unwrap_or_else(|e| {
        Measure::error(
            "p3",
            "bytes to the sink per 1M requests: ALS (d) ÷ filter (c)",
            Goal::AtLeast(10_000.0),
            "ratio",
            &e,
        )
    }));
    results.push(p4);
    let p5 = rt.block_on(measures::convergence(if quick { 1 } else { 5 }));
    results.push(p5.unwrap_or_else(|e| {
        Measure::error("p5", measures::P5_NAME, Goal::AtMost(250.0), "ms", &e)
    }));
    match p6 {
        Ok((m, full, scoped)) => {
            results.push(m);
            let pts = |f: fn(&measures::MemSample) -> u64| -> Vec<(f64, f64)> {
                full.iter()
                    .map(|s| (s.services as f64, measures::mb(f(s))))
                    .collect()
            };
            let xmax = full.last().map_or(1.0, |s| s.services as f64);
            let flat = |v: u64| vec![(0.0, measures::mb(v)), (xmax, measures::mb(v))];
            let path = out_dir.join("p6_sidecar_memory.svg");
            plot::lines(
                &path,
                "Envoy 1.40 sidecar memory: full mesh config vs lazy Sidecar (10 deps + always kept)",
                "services in the mesh",
                "MB",
                &[
                    Line { label: "full: server.memory_allocated".into(), points: pts(|s| s.allocated), dashed: false },
                    Line { label: "full: RSS".into(), points: pts(|s| s.rss), dashed: false },
                    Line { label: "scoped: server.memory_allocated".into(), points: flat(scoped.allocated), dashed: true },
                    Line { label: "scoped: RSS".into(), points: flat(scoped.rss), dashed: true },
                ],
            )?;
            plots.push(path);
        }
        Err(e) => results.push(Measure::error(
            "p6",
            "sidecar memory: full mesh ÷ lazy scoped",
            Goal::AtLeast(10.0),
            "ratio",
            &e,
        )),
    }
    results.extend(p7);
    // The mini-mesh's measures: `make bench` ran `meshbench` (root, network namespaces)
    // before this binary.
    let mesh_json = std::env::var_os("MESHBENCH_OUT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/meshbench/latest.json"));
    results.extend(lazyxds_bench::minimesh::measures(quick, &mesh_json));
    results.sort_by_key(|m| m.key);

    let elapsed = started.elapsed().as_secs_f64();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let run_info = json!({
        "mode": if quick { "quick" } else { "full" },
        "finished_at_unix_s": now,
        "duration_s": elapsed,
        "loadavg_at_end": load.trim(),
        "cpus": cpus,
        "nice": nice,
        "envoy": envoy.display().to_string(),

        "wasm": wasm_built.display().to_string(),
        "controller_built": controller_built.display().to_string(),
        "config": cfg.to_json(),
        "note": "speed figures are ratios of variants measured interleaved in this run; absolute µs depend on the machine and its load",
        "plots": plots.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect::<Vec<_>>(),
    });
    let json_path = out_dir.join("latest.json");
    report::write_json(&json_path, &results, &run_info)?;
    // P1 in instructions (`--bin callgrind`, minutes per gateway: not part of this run).
    let callgrind = out_dir.join(lazyxds_bench::callgrind::RESULT_FILE);
    if lazyxds_bench::callgrind::merge_into_latest(&json_path, &callgrind)? {
        progress!("p1_callgrind from {}", callgrind.display());
    }

    println!();
    print!("{}", report::table(&results, quick));
    println!();
    println!("results: {}", json_path.display());
    for p in &plots {
        println!("plot:    {}", p.display());
    }
    println!("took {:.0} s", elapsed);
    let errors: Vec<&Measure> = results
        .iter()
        .filter(|m| matches!(m.status, report::Status::Error(_)))
        .collect();
    if !errors.is_empty() {
        eprintln!(
            "bench: {} measure(s) failed to run: {}",
            errors.len(),
            errors.iter().map(|m| m.key).collect::<Vec<_>>().join(", ")
        );
        return Ok(false);
    }
    Ok(true)
}
