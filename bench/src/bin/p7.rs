//! P7, P7b and P7c alone: `cargo run --release -p lazyxds-bench --bin p7` (with
//! `BENCH_QUICK=1`: the tiny mesh; `P7_ONLY=1`: without the restart and the churn;
//! `P7_SERVICES=n`: n services and workloads instead of 20,000, e.g. under a heap profiler). The controller is `$LAZYXDS_BIN` (default: the debug build; `make bench`
//! measures the release one). `P7_ARGS` adds `lazyxds run` flags (e.g. `--max-edges
//! 1000000` to see what the /debug/edges store costs); `P7_DRY_RUN=1` runs the controller
//! with `--dry-run` instead of writing. Prints the measure as JSON; writes no result file.

use std::process::ExitCode;

use lazyxds_bench::ctlmem::MeshSpec;
use lazyxds_bench::report;

fn main() -> ExitCode {
    lazyxds_bench::start_clock();
    let set = |v: &str| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0");
    let quick = set("BENCH_QUICK");
    let measures = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(lazyxds_bench::measures::controller_memory_with(
                quick,
                |spec: &mut MeshSpec| {
                    spec.write = !set("P7_DRY_RUN");
                    spec.restart_and_churn = !set("P7_ONLY");
                    if let Some(n) = std::env::var("P7_SERVICES")
                        .ok()
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|&n| n > 0)
                    {
                        spec.services = n;
                        spec.namespaces = spec.namespaces.min(n);
                    }
                    if let Ok(extra) = std::env::var("P7_ARGS") {
                        spec.controller_args = extra.split_whitespace().map(String::from).collect();
                    }
                },
            ))
        })
        .unwrap_or_else(|e| lazyxds_bench::measures::controller_memory_errors(&e));
    let json: serde_json::Map<String, serde_json::Value> = measures
        .iter()
        .map(|m| (m.key.to_string(), m.to_json()))
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    print!("{}", report::table(&measures, quick));
    if measures
        .iter()
        .any(|m| matches!(m.status, report::Status::Error(_)))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
