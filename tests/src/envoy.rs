//! A real Envoy process started from the test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::client;
use crate::process::{tail, Proc};

/// How long Envoy may take to become LIVE (V8 compiles the module per VM; the machine may
/// be busy compiling other things).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Envoy; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Envoy {
    proc: Proc,
    admin: SocketAddr,
    config_path: PathBuf,
    _dir: TempDirGuard,
}

/// Extra settings for [`Envoy::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// CPUs the process and every thread it starts may run on (like `taskset -c`); empty:
    /// those of the calling thread.
    pub cpus: Vec<usize>,
}

/// How a run that was expected to fail ended.
#[derive(Debug)]
pub struct ExitReport {
    /// None: still running at the timeout (then killed).
    pub status: Option<ExitStatus>,
    pub log: String,
    pub elapsed: Duration,
}

impl Envoy {
    /// Starts Envoy with this bootstrap (YAML) and waits until its admin `/ready` says LIVE.
    /// The admin address is learned from `--admin-address-path`, so any admin port works.
    pub async fn start(config_text: &str, concurrency: u32) -> Result<Envoy> {
        Envoy::start_with(config_text, concurrency, &StartOptions::default()).await
    }

    /// [`Envoy::start`] with [`StartOptions`] (e.g. pinned to some CPUs, for benchmarks).
    pub async fn start_with(
        config_text: &str,
        concurrency: u32,
        options: &StartOptions,
    ) -> Result<Envoy> {
        let started = Instant::now();
        let (dir, config_path, mut cmd) = command(config_text, concurrency)?;
        if !options.cpus.is_empty() {
            crate::process::set_cpu_affinity(&mut cmd, &options.cpus);
        }
        let admin_file = dir.path().join("admin-address");
        cmd.arg("--admin-address-path").arg(&admin_file);
        let mut proc = Proc::spawn("envoy", &mut cmd, &dir.path().join("envoy.log"))?;
        let deadline = started + READY_TIMEOUT;
        let mut admin = None;
        let mut last = String::from("no admin address yet");
        loop {
            if let Some(status) = proc.exited() {
                bail!(
                    "Envoy exited during startup ({status}); config {}; log tail:\n{}",
                    config_path.display(),
                    proc.log_tail(40)
                );
            }
            if admin.is_none() {
                admin = read_admin_address(&admin_file);
            }
            if let Some(addr) = admin {
                match client::get(addr.port(), "/ready").await {
                    Ok(r) if r.status == 200 && r.body.trim() == "LIVE" => break,
                    Ok(r) => last = format!("/ready = {} {}", r.status, r.body.trim()),
                    Err(e) => last = format!("/ready: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy not LIVE after {READY_TIMEOUT:?} ({last}); config {}; log tail:\n{}",
                    config_path.display(),
                    proc.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = admin.ok_or_else(|| anyhow!("no admin address"))?;
        crate::note(format_args!(
            "envoy pid {} LIVE in {:?} (admin {admin}, log {})",
            proc.pid(),
            started.elapsed(),
            proc.log_path().display()
        ));
        Ok(Envoy {
            proc,
            admin,
            config_path,
            _dir: dir,
        })
    }

    /// Runs Envoy with a config it is expected to refuse; waits up to `timeout` for it to exit
    /// and returns the status and log. An Envoy that is still running then is killed (status
    /// None) — the caller decides whether that is a failure.
    pub async fn run_expect_exit(
        config_text: &str,
        concurrency: u32,
        timeout: Duration,
    ) -> Result<ExitReport> {
        let started = Instant::now();
        let (dir, _config, mut cmd) = command(config_text, concurrency)?;
        let mut proc = Proc::spawn("envoy", &mut cmd, &dir.path().join("envoy.log"))?;
        let status = proc.wait_exit(timeout).await;
        proc.kill();
        Ok(ExitReport {
            status,
            log: proc.log(),
            elapsed: started.elapsed(),
        })
    }

    /// `envoy --mode validate`: checks the config (schema, references) without serving.
    pub async fn validate(config_text: &str) -> Result<ExitReport> {
        let started = Instant::now();
        let (dir, _config, mut cmd) = command(config_text, 1)?;
        cmd.args(["--mode", "validate"]);
        let mut proc = Proc::spawn("envoy", &mut cmd, &dir.path().join("envoy.log"))?;
        let status = proc.wait_exit(READY_TIMEOUT).await;
        proc.kill();
        Ok(ExitReport {
            status,
            log: proc.log(),
            elapsed: started.elapsed(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin.port()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.proc.log(), lines)
    }

    /// Every counter and gauge from `/stats?format=json`, name → value.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>> {
        let r = client::get(self.admin.port(), "/stats?format=json").await?;
        if r.status != 200 {
            bail!("/stats: {} {}", r.status, r.body);
        }
        let v: Value = serde_json::from_str(&r.body).context("parsing /stats?format=json")?;
        let mut out = Vec::new();
        for s in v["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.push((name.to_string(), value));
            }
        }
        Ok(out)
    }

    /// The one stat whose name is `suffix` or ends with `.{suffix}`: Wasm metrics get a
    /// prefix (e.g. `wasmcustom.`) that differs between Envoy versions.
    pub async fn counter(&self, suffix: &str) -> Result<u64> {
        let stats = self.stats().await?;
        let hits: Vec<&(String, u64)> = stats
            .iter()
            .filter(|(n, _)| n == suffix || n.ends_with(&format!(".{suffix}")))
            .collect();
        match hits.as_slice() {
            [(_, v)] => Ok(*v),
            [] => {
                let word = suffix.split('.').next().unwrap_or(suffix);
                let near: Vec<&str> = stats
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| n.contains(word))
                    .collect();
                bail!("no stat named *{suffix}; stats containing {word:?}: {near:?}")
            }
            many => bail!("stat suffix {suffix:?} is ambiguous: {many:?}"),
        }
    }

    /// Asks Envoy to exit (admin `/quitquitquit`) and waits for it; SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = client::post(self.admin.port(), "/quitquitquit").await;
        if self.proc.wait_exit(grace).await.is_none() {
            self.proc.kill();
        }
        self.proc.exited()
    }
}

fn command(config_text: &str, concurrency: u32) -> Result<(TempDirGuard, PathBuf, Command)> {
    let bin = crate::paths::envoy_bin()?;
    let dir = TempDirGuard::new("envoy")?;
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, config_text)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&config_path)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        // Several Envoys run at once: no shared-memory hot-restart region to collide on.
        .arg("--disable-hot-restart")
        .args(["-l", "info"]);
    Ok((dir, config_path, cmd))
}

fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    let addr: SocketAddr = text.trim().parse().ok()?;
    // Envoy writes the bound address; a wildcard would still be reachable on loopback.
    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())))
}

/// A temp dir for one process's config and logs; kept when `LAZYXDS_E2E_KEEP=1` so a failed
/// run can be inspected.
#[derive(Debug)]
pub struct TempDirGuard(Option<tempfile::TempDir>, PathBuf);

impl TempDirGuard {
    pub fn new(what: &str) -> Result<TempDirGuard> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lazyxds-e2e-{what}-"))
            .tempdir()?;
        let path = dir.path().to_path_buf();
        Ok(TempDirGuard(Some(dir), path))
    }

    pub fn path(&self) -> &Path {
        &self.1
    }
}

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if std::env::var_os("LAZYXDS_E2E_KEEP").is_some_and(|v| v == "1") {
            if let Some(dir) = self.0.take() {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}
