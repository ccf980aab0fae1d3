//! Istio's sidecar injection, run offline: `istioctl kube-inject` with the injection
//! templates (`sidecar`, `gateway`) and helm values of the pinned istio module, as the
//! `istio-sidecar-injector` ConfigMap of a default install carries them, and the test mesh's
//! config. The webhook itself does not run (the API server would need to reach istiod's
//! webhook port under a name its serving certificate holds); what is added to a pod is the
//! template's output, not ours.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{bin, bin_dir, Cluster};

/// The proxy image injection names (`global.hub`/`global.tag`): the node runs
/// `pilot-agent` for containers of this image.
pub const PROXY_IMAGE_HUB: &str = "lazyxds-test";
pub const PROXY_IMAGE_TAG: &str = "pinned";

/// What the mesh's `defaultConfig` adds for the mini-mesh (appended under the
/// `defaultConfig:` of [`super::istiod::mesh_config`]): DNS capture by the agent, apps held
/// until their proxy is ready (so no request is sent before Envoy listens), one worker, and
/// the per-cluster request counters kept (Istio's bootstrap drops `cluster.outbound|…` stats
/// unless `proxyStatsMatcher` asks for them): the tests count gateway vs direct from them;
/// and the routers' `no_cluster` (requests answered 503 because their route's cluster was not
/// active: a route that arrived before its cluster finished warming).
pub const DEFAULT_CONFIG_EXTRA: &str = "  holdApplicationUntilProxyStarts: true\n  \
     concurrency: 1\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n  \
     proxyStatsMatcher:\n    inclusionSuffixes: [upstream_rq_total, no_cluster]\n";

/// The files `istioctl kube-inject` reads, written once per cluster run.
#[derive(Debug)]
pub struct Injector {
    config: PathBuf,
    values: PathBuf,
    mesh: PathBuf,
}

impl Injector {
    /// Writes the injection config and values (from the istio module) and the mesh config,
    /// and applies the same mesh config to the cluster's `istio` ConfigMap.
    pub fn new(cluster: &Cluster) -> Result<Injector> {
        let src = template_dir()?;
        let read = |name: &str| -> Result<String> {
            std::fs::read_to_string(src.join(name))
                .with_context(|| format!("reading {}", src.join(name).display()))
        };
        let dir = cluster.dir().join("inject");
        std::fs::create_dir_all(&dir)?;
        // The ConfigMap's `config` key, as istio-discovery's istiod-injector-configmap.yaml
        // renders it with default values.
        let config = json!({
            "defaultTemplates": ["sidecar"],
            "policy": "enabled",
            "alwaysInjectSelector": [],
            "neverInjectSelector": [],
            "injectedAnnotations": {},
            "template": "",
            "templates": {
                "sidecar": read("files/injection-template.yaml")?,
                "gateway": read("files/gateway-injection-template.yaml")?,
            },
        });
        // Its `values` key: the chart's defaults, scoped as that template scopes them.
        let chart: Value =
            serde_norway::from_str(&read("values.yaml")?).context("istio-discovery values.yaml")?;
        let defaults = &chart["_internal_defaults_do_not_set"];
        let mut global = defaults["global"].clone();
        global["hub"] = json!(PROXY_IMAGE_HUB);
        global["tag"] = json!(PROXY_IMAGE_TAG);
        // istiod is reached at its address, not through a Service name (no kube-dns here).
        global["caAddress"] = json!(cluster.istiod().discovery_address());
        let values = json!({
            "global": global,
            "sidecarInjectorWebhook": defaults["sidecarInjectorWebhook"],
            "revision": defaults["revision"],
            "pilot": {"cni": defaults["cni"], "env": defaults["env"]},
            "gateways": {
                "securityContext": defaults["gateways"]["securityContext"],
                "seccompProfile": defaults["gateways"]["seccompProfile"],
            },
        });
        let mesh = format!(
            "{}{DEFAULT_CONFIG_EXTRA}",
            super::istiod::mesh_config(&cluster.istiod().discovery_address())
        );
        let injector = Injector {
            config: dir.join("config.yaml"),
            values: dir.join("values.json"),
            mesh: dir.join("mesh.yaml"),
        };
        std::fs::write(&injector.config, serde_norway::to_string(&config)?)?;
        std::fs::write(&injector.values, values.to_string())?;
        std::fs::write(&injector.mesh, &mesh)?;
        cluster.set_mesh_config(DEFAULT_CONFIG_EXTRA)?;
        Ok(injector)
    }

    /// `istioctl kube-inject` of a YAML stream (workloads get their `istio-init` and
    /// `istio-proxy`; other objects pass through).
    pub fn inject(&self, yaml: &str) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new(bin("istioctl")?)
            .args(["kube-inject", "-r", "default", "-f", "-"])
            .arg(format!("--injectConfigFile={}", self.config.display()))
            .arg(format!("--valuesFile={}", self.values.display()))
            .arg(format!("--meshConfigFile={}", self.mesh.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning istioctl kube-inject")?;
        let input = yaml.to_string();
        let feeder = child
            .stdin
            .take()
            .map(|mut pipe| std::thread::spawn(move || pipe.write_all(input.as_bytes())));
        let out = child.wait_with_output()?;
        if let Some(f) = feeder {
            let _ = f.join();
        }
        if !out.status.success() {
            bail!(
                "istioctl kube-inject failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// istio-discovery's chart directory (`files/*-template.yaml`, `values.yaml`):
/// `<bin>/istio-inject/` (copied by `tests/cluster/go/build.sh`), else the pinned istio
/// module in Go's module cache.
fn template_dir() -> Result<PathBuf> {
    let copied = bin_dir().join("istio-inject");
    if copied.join("files/injection-template.yaml").is_file() {
        return Ok(copied);
    }
    let module_dir = crate::paths::workspace_root().join("tests/cluster/go/istio");
    let out = Command::new("go")
        .args(["list", "-m", "-f", "{{.Dir}}", "istio.io/istio"])
        .current_dir(&module_dir)
        .output()
        .context("running `go list -m istio.io/istio` (or run `make setup-cluster`)")?;
    let dir = Path::new(String::from_utf8_lossy(&out.stdout).trim())
        .join("manifests/charts/istio-control/istio-discovery");
    if !out.status.success() || !dir.join("files/injection-template.yaml").is_file() {
        bail!(
            "no injection templates in {} nor in the istio module: run `make setup-cluster`",
            copied.display()
        );
    }
    Ok(dir)
}
