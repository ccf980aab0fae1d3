//! The real `lazyxds` controller binary, on free loopback ports.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::client;
use crate::edges::EdgeKey;
use crate::envoy::TempDirGuard;
use crate::ports::free_port;
use crate::process::Proc;

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One row of `GET /debug/edges`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EdgeRow {
    pub source_ip: IpAddr,
    pub host: Option<String>,
    pub cluster: String,
    pub principal: Option<String>,
    pub requests: u64,
    #[serde(default)]
    pub last_seen_unix_s: u64,
}

impl EdgeRow {
    pub fn key(&self) -> EdgeKey {
        EdgeKey {
            source_ip: self.source_ip,
            host: self.host.clone(),
            cluster: self.cluster.clone(),
            principal: self.principal.clone(),
        }
    }
}

/// The whole `GET /debug/edges` document.
#[derive(Debug, Clone, Deserialize)]
pub struct DebugEdges {
    pub edges: Vec<EdgeRow>,
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// A running controller; killed when dropped.
#[derive(Debug)]
pub struct Controller {
    proc: Option<Proc>,
    grpc_port: u16,
    http_port: u16,
    starts: u32,
    extra_args: Vec<String>,
    dir: TempDirGuard,
}

impl Controller {
    /// `lazyxds run --grpc-addr 127.0.0.1:P --http-addr 127.0.0.1:Q`, ready when `/readyz`
    /// answers 200.
    pub async fn start() -> Result<Controller> {
        Controller::start_with_args(&[]).await
    }

    /// Same, with more arguments after `run`.
    pub async fn start_with_args(extra_args: &[&str]) -> Result<Controller> {
        crate::paths::lazyxds_bin()?;
        let mut c = Controller {
            proc: None,
            grpc_port: free_port()?,
            http_port: free_port()?,
            starts: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir: TempDirGuard::new("controller")?,
        };
        c.spawn_and_wait().await?;
        Ok(c)
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The current process's log (empty when not running).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// SIGKILL: a hard outage, nothing is flushed or closed gracefully.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(grace);
        }
    }

    /// A fresh process (empty memory) on the same ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn_and_wait().await
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        let mut last = String::new();
        // A port just freed by a killed process may take a moment to bind again: respawn.
        while Instant::now() < deadline {
            self.starts += 1;
            let mut cmd = Command::new(crate::paths::lazyxds_bin()?);
            cmd.arg("run")
                .arg("--grpc-addr")
                .arg(format!("127.0.0.1:{}", self.grpc_port))
                .arg("--http-addr")
                .arg(format!("127.0.0.1:{}", self.http_port))
                .args(&self.extra_args);
            // Plain text in the log file.
            cmd.env("NO_COLOR", "1");
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            let log = self.dir.path().join(format!("lazyxds.{}.log", self.starts));
            let mut proc = Proc::spawn("lazyxds", &mut cmd, &log)?;
            loop {
                if let Some(status) = proc.exited() {
                    last = format!("exited {status}; log tail:\n{}", proc.log_tail(30));
                    break;
                }
                match client::get(self.http_port, "/readyz").await {
                    Ok(r) if r.status == 200 => {
                        crate::note(format_args!(
                            "lazyxds pid {} ready in {:?} (grpc 127.0.0.1:{}, http 127.0.0.1:{}, log {})",
                            proc.pid(),
                            started.elapsed(),
                            self.grpc_port,
                            self.http_port,
                            log.display()
                        ));
                        self.proc = Some(proc);
                        return Ok(());
                    }
                    Ok(r) => last = format!("/readyz = {} {}", r.status, r.body.trim()),
                    Err(e) => last = format!("/readyz: {e:#}"),
                }
                if Instant::now() >= deadline {
                    last = format!("{last}; log tail:\n{}", proc.log_tail(30));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("lazyxds not ready after {READY_TIMEOUT:?}: {last}")
    }

    /// `GET /debug/edges`.
    pub async fn debug_edges(&self) -> Result<DebugEdges> {
        let r = client::get(self.http_port, "/debug/edges").await?;
        if r.status != 200 {
            bail!("/debug/edges: {} {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).with_context(|| format!("parsing /debug/edges: {}", r.body))
    }

    pub async fn edges(&self) -> Result<Vec<EdgeRow>> {
        Ok(self.debug_edges().await?.edges)
    }

    pub async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.debug_edges().await?.counters)
    }

    /// Polls `/debug/edges` until every expected edge is there with at least its request
    /// count (`None` = any count), or fails after `timeout` with what is missing.
    pub async fn wait_for_edges(
        &self,
        expected: &BTreeMap<EdgeKey, Option<u64>>,
        timeout: Duration,
    ) -> Result<Vec<EdgeRow>> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.edges().await?;
            let diff = crate::edges::diff(expected, &rows);
            if diff.missing_or_short.is_empty() {
                return Ok(rows);
            }
            if Instant::now() >= deadline {
                bail!(
                    "after {timeout:?} the controller still lacks edges:\n{diff}\ncontroller log tail:\n{}",
                    crate::process::tail(&self.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Convenience for assertions and tables.
pub fn ip(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, d))
}
