//! P7 alone: `cargo run --release -p lazyxds-bench --bin p7` (with `BENCH_QUICK=1`: the
//! tiny mesh). The controller is `$LAZYXDS_BIN` (default: the debug build; `make bench`
//! measures the release one). `P7_ARGS` adds `lazyxds run` flags (e.g. `--max-edges
//! 1000000` to see what the /debug/edges store costs); `P7_DRY_RUN=1` runs the controller
//! with `--dry-run` instead of writing. Prints the measure as JSON; writes no result file.

use std::process::ExitCode;

use lazyxds_bench::ctlmem::MeshSpec;
use lazyxds_bench::report::{self, Goal, Measure};

fn main() -> ExitCode {
    lazyxds_bench::start_clock();
    let set = |v: &str| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0");
    let quick = set("BENCH_QUICK");
    let measure = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(lazyxds_bench::measures::controller_memory_with(
                quick,
                |spec: &mut MeshSpec| {
                    spec.write = !set("P7_DRY_RUN");
                    if let Ok(extra) = std::env::var("P7_ARGS") {
                        spec.controller_args = extra.split_whitespace().map(String::from).collect();
                    }
                },
            ))
        })
        .unwrap_or_else(|e| {
            Measure::error(
                "p7",
                lazyxds_bench::measures::P7_NAME,
                Goal::AtMost(300.0),
                "MB",
                &e,
            )
        });
    println!(
        "{}",
        serde_json::to_string_pretty(&measure.to_json()).unwrap_or_default()
    );
    print!("{}", report::table(std::slice::from_ref(&measure), quick));
    if matches!(measure.status, report::Status::Error(_)) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
