//! P1 in instructions: `cargo run --release -p lazyxds-bench --bin callgrind` runs gateways
//! (a) no filter, (b) the filter with `report: false`, (c) the filter reporting, each under
//! `valgrind --tool=callgrind` (see `lazyxds_bench::callgrind`), and writes
//! `p1_callgrind.json` beside `latest.json` (`BENCH_OUT`, default `bench/results`), then
//! puts it into `latest.json` as `p1_callgrind`. ~5 min per gateway on a busy machine.
//!
//! `CALLGRIND_SDK_WASM=path` also measures that module (the same filter built on the
//! proxy-wasm SDK: `make wasm-sdk`) as `b_sdk` and `c_sdk`; `CALLGRIND_MODULES=key=path,…`
//! measures (c) with other modules (e.g. before and after a change).
//! `CALLGRIND_VARIANTS=a,b,c` picks variants; `CALLGRIND_REPEAT_ONLY=a,b,c` repeats only
//! those; `CALLGRIND_PARALLEL` (default 2) gateways at once; `CALLGRIND_REPEATS`,
//! `CALLGRIND_RATE`, `CALLGRIND_N1`, `CALLGRIND_N2`, `CALLGRIND_WARMUP` override the knobs.
//! The controller is `$LAZYXDS_BIN` (default `target/release/lazyxds`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use lazyxds_bench::callgrind::{self, CgConfig, CgVariant};
use lazyxds_bench::gateway::Variant;
use lazyxds_bench::measures::Upstreams;
use lazyxds_bench::progress;

fn main() -> ExitCode {
    lazyxds_bench::start_clock();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callgrind: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if std::env::var_os("LAZYXDS_BIN").is_none() {
        std::env::set_var("LAZYXDS_BIN", root.join("target/release/lazyxds"));
    }
    let out_dir = std::env::var_os("BENCH_OUT")
        .filter(|v| !v.is_empty())
        .map_or_else(|| root.join("bench/results"), PathBuf::from);
    let mut cfg = CgConfig::full();
    if let Some(r) = var("CALLGRIND_RATE")? {
        cfg.rate = r;
    }
    if let Some(r) = var("CALLGRIND_REPEATS")? {
        cfg.repeats = r;
    }
    if let Some(n) = var("CALLGRIND_N1")? {
        cfg.n1 = n;
    }
    if let Some(n) = var("CALLGRIND_N2")? {
        cfg.n2 = n;
    }
    if let Some(n) = var("CALLGRIND_WARMUP")? {
        cfg.warmup = n;
    }
    let parallel = var::<usize>("CALLGRIND_PARALLEL")?.unwrap_or(2);
    let list = |name: &str| -> Vec<String> {
        std::env::var(name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    anyhow::ensure!(cfg.n2 > cfg.n1, "CALLGRIND_N2 must be above CALLGRIND_N1");
    // Private copies: a rebuild during the run must not change what is measured.
    let work = tempfile::tempdir()?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = work.path().join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        Ok(to)
    };
    let wasm = copy(&lazyxds_e2e::paths::wasm_path()?, "lazyxds_filter.wasm")?;
    let mut variants = vec![
        CgVariant {
            key: "a".into(),
            variant: Variant::NoFilter,
            wasm: wasm.clone(),
        },
        CgVariant {
            key: "b".into(),
            variant: Variant::FilterInert,
            wasm: wasm.clone(),
        },
        CgVariant {
            key: "c".into(),
            variant: Variant::Filter,
            wasm: wasm.clone(),
        },
    ];
    if let Some(sdk) = std::env::var_os("CALLGRIND_SDK_WASM").filter(|v| !v.is_empty()) {
        let sdk = copy(Path::new(&sdk), "lazyxds_filter_sdk.wasm")?;
        variants.push(CgVariant {
            key: "b_sdk".into(),
            variant: Variant::FilterInert,
            wasm: sdk.clone(),
        });
        variants.push(CgVariant {
            key: "c_sdk".into(),
            variant: Variant::Filter,
            wasm: sdk,
        });
    }
    for module in list("CALLGRIND_MODULES") {
        let (key, path) = module
            .split_once('=')
            .with_context(|| format!("CALLGRIND_MODULES entry {module:?} is not key=path"))?;
        let wasm = copy(Path::new(path), &format!("{key}.wasm"))?;
        variants.push(CgVariant {
            key: key.into(),
            variant: Variant::Filter,
            wasm,
        });
    }
    let pick = list("CALLGRIND_VARIANTS");
    if !pick.is_empty() {
        variants.retain(|v| pick.contains(&v.key));
    }
    std::fs::create_dir_all(&out_dir)?;
    let keep_dir = root.join("target/callgrind");
    std::fs::create_dir_all(&keep_dir)?;
    progress!(
        "callgrind: variants {:?}, {} req/s, warm-up {}, N1 {}, N2 {}, {} repeat(s); dumps kept in {}",
        variants.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
        cfg.rate,
        cfg.warmup,
        cfg.n1,
        cfg.n2,
        cfg.repeats,
        keep_dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let doc = rt.block_on(async {
        let up = Upstreams::start(cfg.sources, cfg.services, wasm.clone()).await?;
        callgrind::run(
            &cfg,
            &up,
            &variants,
            &list("CALLGRIND_REPEAT_ONLY"),
            parallel,
            &keep_dir,
        )
        .await
    })?;
    let path = out_dir.join(callgrind::RESULT_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    let latest = out_dir.join("latest.json");
    if latest.exists() && callgrind::merge_into_latest(&latest, &path)? {
        println!("merged into {} as p1_callgrind", latest.display());
    }
    println!("results: {}", path.display());
    Ok(())
}
