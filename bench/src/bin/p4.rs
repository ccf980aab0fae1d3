//! P4 alone: `cargo run --release -p lazyxds-bench --bin p4` (`P4_RUNS=n`: n runs one
//! after another, to see the spread on a noisy machine; `BENCH_QUICK=1`: the quick
//! settings). The sink is compiled in, so comparing two builds means two binaries. Prints
//! each run's measure as JSON; writes no result file.

use std::process::ExitCode;

use lazyxds_bench::measures::{self, RunConfig};

fn main() -> ExitCode {
    lazyxds_bench::start_clock();
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let runs = std::env::var("P4_RUNS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let config = if quick {
        RunConfig::quick()
    } else {
        RunConfig::full()
    }
    .with_env();
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("p4: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("p4: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for _ in 0..runs {
        match runtime.block_on(measures::controller_ingest(&config)) {
            Ok(m) => println!("{}", m.to_json()),
            Err(e) => {
                eprintln!("p4: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
