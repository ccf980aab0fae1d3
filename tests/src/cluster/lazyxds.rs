//! lazyxds installed in the test cluster for real: `lazyxds install | kubectl apply
//! --server-side -f -`, a Node for the scheduler to bind pods to, and the controller run as
//! its Deployment's pods run it (the rendered args and env, a token of its ServiceAccount,
//! so the installed RBAC is what the real authorizer enforces).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{http_get_plain, Cluster};
use crate::process::Proc;

/// The namespace `lazyxds install` uses by default.
pub const NAMESPACE: &str = "lazyxds-system";
/// The node every test pod is bound to by the real scheduler.
pub const NODE: &str = "node-0";

/// The rendered install, applied once per test binary.
#[derive(Debug)]
pub struct Installed {
    pub manifest: String,
    pub objects: Vec<Value>,
}

static INSTALLED: OnceLock<std::result::Result<Installed, String>> = OnceLock::new();

/// `lazyxds install` with these flags (stdout), as YAML text and as objects.
pub fn render(flags: &[&str]) -> Result<(String, Vec<Value>)> {
    let out = Command::new(crate::paths::lazyxds_bin()?)
        .arg("install")
        .args(flags)
        .current_dir(crate::paths::workspace_root())
        .output()
        .context("running lazyxds install")?;
    if !out.status.success() {
        bail!(
            "lazyxds install {flags:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("install output is not UTF-8")?;
    let objects = parse_yaml_stream(&text)?;
    Ok((text, objects))
}

/// Every document of a YAML stream, nulls (empty documents) left out.
pub fn parse_yaml_stream(text: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).context("install output: bad YAML")?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

impl Installed {
    /// Installs once (default flags, the module from `make wasm`) and registers the node.
    pub fn shared(cluster: &Cluster) -> Result<&'static Installed> {
        Self::shared_with(cluster, |m| Ok(m.to_string()))
    }

    /// Installs once, applying `rewrite(manifest)` instead of the manifest (the mini-mesh
    /// applies it through `istioctl kube-inject`, as the injection webhook would change its
    /// pods); `manifest` and `objects` stay the rendered install.
    /// [`Installed::shared_with`] with the install's Deployments injected by `injector`
    /// (the mini-mesh: the gateway and the controller run on the node with their proxies).
    pub fn shared_injected(
        cluster: &Cluster,
        injector: &super::inject::Injector,
    ) -> Result<&'static Installed> {
        Installed::shared_with(cluster, |manifest| {
            let mut objects = parse_yaml_stream(manifest)?;
            for o in objects.iter_mut() {
                if o["kind"] == "Deployment" {
                    let injected = injector.inject(&serde_norway::to_string(o)?)?;
                    *o = parse_yaml_stream(&injected)?.remove(0);
                }
            }
            Ok(json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string())
        })
    }

    pub fn shared_with(
        cluster: &Cluster,
        rewrite: impl FnOnce(&str) -> Result<String>,
    ) -> Result<&'static Installed> {
        INSTALLED
            .get_or_init(|| Installed::apply(cluster, rewrite).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("installing lazyxds in the test cluster: {e}"))
    }

    fn apply(cluster: &Cluster, rewrite: impl FnOnce(&str) -> Result<String>) -> Result<Installed> {
        register_node(cluster)?;
        let (manifest, objects) = render(&[])?;
        cluster
            .kubectl(
                &["apply", "--server-side", "-f", "-"],
                Some(&rewrite(&manifest)?),
            )
            .context("kubectl apply --server-side of `lazyxds install`")?;
        Ok(Installed { manifest, objects })
    }

    /// The rendered object of this kind and name.
    pub fn object(&self, kind: &str, name: &str) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .ok_or_else(|| anyhow!("the install renders no {kind} {name}"))
    }

    /// The controller container of the rendered Deployment.
    pub fn controller_container(&self) -> Result<&Value> {
        let d = self.object("Deployment", "lazyxds")?;
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "lazyxds"))
            .ok_or_else(|| anyhow!("the lazyxds Deployment has no lazyxds container"))
    }
}

/// A Node with capacity, Ready, so the real scheduler binds pods to it (it runs nothing:
/// the tests play the kubelet by writing pod status).
pub fn register_node(cluster: &Cluster) -> Result<()> {
    let resources = json!({"cpu": "64", "memory": "256Gi", "pods": "1000"});
    cluster.apply_json(&[json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
    })])?;
    let now = "2026-01-01T00:00:00Z";
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": cluster.listen().to_string()}],
    }});
    cluster.patch_status("node", None, NODE, &status)?;
    // Admission taints a new Node not-ready; the node lifecycle controller would lift it
    // on the kubelet's first heartbeat. There is no kubelet (and no lifecycle controller,
    // which would mark the node unreachable), so the test lifts it.
    cluster.kubectl(
        &[
            "patch",
            "node",
            NODE,
            "--type=merge",
            "-p",
            r#"{"spec":{"taints":null}}"#,
        ],
        None,
    )?;
    Ok(())
}

/// Adds `ip` to the loopback device of the test's network namespace, so a process can listen
/// on its pod IP. Refuses to run outside a network namespace of the tests' own.
pub fn add_pod_address(ip: Ipv4Addr) -> Result<()> {
    ensure_private_netns()?;
    let out = Command::new("ip")
        .args(["addr", "replace", &format!("{ip}/32"), "dev", "lo"])
        .output()
        .context("running ip addr")?;
    if !out.status.success() {
        bail!(
            "ip addr replace {ip}/32 dev lo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An error unless this process runs in a network namespace other than PID 1's (the
/// cluster tests run under `tests/cluster/netns-run`).
pub fn ensure_private_netns() -> Result<()> {
    let mine = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let init = std::fs::read_link("/proc/1/ns/net").ok();
    if init.as_ref() == Some(&mine) {
        bail!(
            "the cluster tests add pod addresses and listen on every interface: run them in a \
             network namespace of their own (`make test-cluster`, i.e. tests/cluster/netns-run)"
        );
    }
    Ok(())
}

/// Pods of a namespace whose labels include `app=<app>`, once the scheduler bound them.
pub async fn scheduled_pods(
    cluster: &Cluster,
    namespace: &str,
    app: &str,
    want: usize,
) -> Result<Vec<Value>> {
    let t = Instant::now();
    loop {
        let out = cluster.kubectl(
            &[
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                &format!("app={app}"),
                "-o",
                "json",
            ],
            None,
        )?;
        let list: Value = serde_json::from_str(&out)?;
        let pods: Vec<Value> = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p["spec"]["nodeName"] == NODE && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        if pods.len() >= want {
            return Ok(pods);
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "{namespace}: {} scheduled pods with app={app} after 60 s, want {want}",
                pods.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The real controller binary, run as a pod of the installed Deployment runs it.
#[derive(Debug)]
pub struct ControllerPod {
    proc: Option<Proc>,
    pub pod: String,
    pub ip: Ipv4Addr,
    pub grpc_port: u16,
    pub http_port: u16,
    cmd_args: Vec<String>,
    cmd_env: Vec<(String, String)>,
    log_dir: PathBuf,
    starts: u32,
}

impl ControllerPod {
    /// Runs the controller for pod `pod` at `ip` with the rendered Deployment's args and env
    /// (`extra_env` overrides, e.g. a shorter write debounce), authenticated with a token of
    /// the Deployment's ServiceAccount. Listens on the pod IP at the rendered ports.
    pub async fn start(
        cluster: &Cluster,
        installed: &Installed,
        pod: &str,
        ip: Ipv4Addr,
        extra_env: &[(&str, &str)],
    ) -> Result<ControllerPod> {
        let container = installed.controller_container()?;
        let deployment = installed.object("Deployment", "lazyxds")?;
        let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .context("the Deployment names no ServiceAccount")?;
        let kubeconfig = cluster.kubeconfig_for(NAMESPACE, sa)?;
        let cmd_args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let value = match (
                &e["value"],
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(v), _) => v.clone(),
                (_, Some("metadata.name")) => pod.to_string(),
                (_, Some("metadata.namespace")) => NAMESPACE.to_string(),
                (_, other) => bail!("controller env {name}: unsupported source {other:?}"),
            };
            env.push((name, value));
        }
        // In a pod the controller has its own network namespace; here it shares the test's,
        // so it listens on its pod IP at the rendered ports instead of 0.0.0.0.
        let port_of = |var: &str| -> Result<u16> {
            env.iter()
                .find(|(k, _)| k == var)
                .and_then(|(_, v)| v.rsplit_once(':')?.1.parse().ok())
                .ok_or_else(|| anyhow!("the Deployment sets no {var}"))
        };
        let grpc_port = port_of("LAZYXDS_GRPC_ADDR")?;
        let http_port = port_of("LAZYXDS_HTTP_ADDR")?;
        for (k, v) in env.iter_mut() {
            match k.as_str() {
                "LAZYXDS_GRPC_ADDR" => *v = format!("{ip}:{grpc_port}"),
                "LAZYXDS_HTTP_ADDR" => *v = format!("{ip}:{http_port}"),
                _ => {}
            }
        }
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        env.push(("NO_COLOR".into(), "1".into()));
        // The test reads /debug/* from outside the pod (from the pod IP, not 127.0.0.1
        // where a kubectl port-forward would come from).
        env.push(("LAZYXDS_DEBUG_ENDPOINTS".into(), "open".into()));
        // Tests opt whole namespaces in and out: a mass removal is held 2 s, not 120 s
        // (the hold itself is asserted where it happens).
        env.push(("LAZYXDS_REMOVAL_CONFIRM_SECS".into(), "2".into()));
        // RUST_LOG of the test run sets the controller's log filter (e.g. the writer's
        // diffs at debug).
        let rust_log = std::env::var("RUST_LOG").ok();
        for (k, v) in extra_env
            .iter()
            .copied()
            .chain(rust_log.as_deref().map(|v| ("LAZYXDS_LOG_LEVEL", v)))
        {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        add_pod_address(ip)?;
        let mut c = ControllerPod {
            proc: None,
            pod: pod.to_string(),
            ip,
            grpc_port,
            http_port,
            cmd_args,
            cmd_env: env,
            log_dir: cluster.dir().to_path_buf(),
            starts: 0,
        };
        c.spawn_and_wait().await?;
        Ok(c)
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        self.starts = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut cmd = Command::new(crate::paths::lazyxds_bin()?);
        cmd.args(&self.cmd_args).env_clear();
        for (k, v) in &self.cmd_env {
            cmd.env(k, v);
        }
        let log = self
            .log_dir
            .join(format!("controller-{}.{}.log", self.pod, self.starts));
        let mut proc = Proc::spawn("lazyxds", &mut cmd, &log)?;
        let t = Instant::now();
        loop {
            if let Some(status) = proc.exited() {
                bail!(
                    "controller {} exited ({status}):\n{}",
                    self.pod,
                    proc.log_tail(30)
                );
            }
            // Ready (or, for a standby replica, at least serving /healthz).
            if http_get_plain(self.ip, self.http_port, "/healthz").is_ok() {
                crate::note(format_args!(
                    "controller pod {} ({}) up in {:?}, log {}",
                    self.pod,
                    self.ip,
                    t.elapsed(),
                    log.display()
                ));
                self.proc = Some(proc);
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "controller {} not serving after 30 s:\n{}",
                    self.pod,
                    proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this replica leads: its pod carries `lazyxds.io/leader=true`, the label
    /// the gRPC Service selects (a standby refuses edge streams, UNAVAILABLE "not the
    /// leader"; `/readyz` does not say: a standby is ready to take over).
    pub async fn wait_leading(&self, cluster: &Cluster) -> Result<()> {
        let t = Instant::now();
        loop {
            let pod = cluster.get("pod", Some(NAMESPACE), &self.pod)?;
            if pod.is_some_and(|p| p["metadata"]["labels"]["lazyxds.io/leader"] == "true") {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "controller {} not leading after 60 s:\n{}",
                    self.pod,
                    crate::process::tail(&self.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, then the same pod starts again (empty memory).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn_and_wait().await
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// `GET` on the controller's HTTP port (body if 200).
    pub fn http_get(&self, path: &str) -> Result<String> {
        http_get_plain(self.ip, self.http_port, path)
    }

    pub fn grpc_addr(&self) -> String {
        format!("{}:{}", self.ip, self.grpc_port)
    }
}

/// The `x-forwarded-client-cert` the controller's sidecar hands it for a stream from the
/// gateway (the default install's identities; SANITIZE_SET: this one element). The
/// controller runs `--edge-auth xfcc` as its Deployment says; here no sidecar stands
/// between the test and the controller, so the test writes what the sidecar would
/// (`cluster.rs` checks istiod gives the sidecar exactly that behaviour).
pub fn gateway_xfcc() -> String {
    format!(
        "By=spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds;Hash=0;Subject=\"\";\
         URI=spiffe://cluster.local/ns/{NAMESPACE}/sa/lazyxds-gateway"
    )
}

/// Streams one batch of (source IP, upstream cluster) edges to a controller, as one gateway
/// worker would (`Hello`, then one `EdgeBatch`), and waits for its ack.
pub async fn send_edges(grpc_addr: &str, edges: &[(Ipv4Addr, &str)]) -> Result<()> {
    send_edges_as(grpc_addr, Some(&gateway_xfcc()), edges).await
}

/// [`send_edges`] with the callers' verified identity on every edge, as the gateway
/// reports a caller that came in over mTLS (the installed controller requires one).
pub async fn send_edges_from(
    grpc_addr: &str,
    principal: &str,
    edges: &[(Ipv4Addr, &str)],
) -> Result<()> {
    send_edges_with(grpc_addr, Some(&gateway_xfcc()), Some(principal), edges).await
}

/// [`send_edges`] with this `x-forwarded-client-cert` (none: no header).
pub async fn send_edges_as(
    grpc_addr: &str,
    xfcc: Option<&str>,
    edges: &[(Ipv4Addr, &str)],
) -> Result<()> {
    send_edges_with(grpc_addr, xfcc, None, edges).await
}

async fn send_edges_with(
    grpc_addr: &str,
    xfcc: Option<&str>,
    principal: Option<&str>,
    edges: &[(Ipv4Addr, &str)],
) -> Result<()> {
    use lazyxds_proto::v1::edge_sink_client::EdgeSinkClient;
    use lazyxds_proto::v1::{
        controller_message, gateway_message, ControllerMessage, Edge, EdgeBatch, GatewayMessage,
        Hello, Name,
    };
    let mut client = EdgeSinkClient::connect(format!("http://{grpc_addr}"))
        .await
        .with_context(|| format!("connecting to the controller at {grpc_addr}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(xfcc) = xfcc {
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", xfcc.parse()?);
    }
    let mut replies = client.stream(request).await?.into_inner();
    let mut names: Vec<Name> = edges
        .iter()
        .zip(1u32..)
        .map(|((_, cluster), id)| Name {
            id,
            value: cluster.to_string(),
        })
        .collect();
    let principal = principal.map(|value| {
        let id = names.len() as u32 + 1;
        names.push(Name {
            id,
            value: value.to_string(),
        });
        id
    });
    let edges = edges
        .iter()
        .zip(1u32..)
        .map(|((ip, _), id)| Edge {
            source_ip: ip.octets().to_vec(),
            cluster: id,
            principal: principal.unwrap_or(0),
            requests: 1,
            ..Edge::default()
        })
        .collect();
    let sent_at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for kind in [
        gateway_message::Kind::Hello(Hello {
            gateway_id: "test-gateway".into(),
            worker: "w0".into(),
            resync: false,
        }),
        gateway_message::Kind::Batch(EdgeBatch {
            seq: 1,
            sent_at_unix_s,
            names,
            edges,
        }),
    ] {
        let _ = tx.send(GatewayMessage { kind: Some(kind) }).await;
    }
    // The namespace table may come first (it follows Hello): wait for the ack itself.
    loop {
        match replies.message().await? {
            Some(ControllerMessage {
                kind: Some(controller_message::Kind::Ack(ack)),
            }) if ack.seq >= 1 => return Ok(()),
            Some(_) => continue,
            None => bail!("the controller closed the stream without an ack"),
        }
    }
}

/// The controller pod that leads now (it labels itself `lazyxds.io/leader=true`), if any.
pub fn leader_pod(c: &Cluster) -> Result<Option<String>> {
    let out = c.kubectl(
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "lazyxds.io/leader=true",
            "-o",
            "name",
        ],
        None,
    )?;
    Ok(out
        .lines()
        .next()
        .map(|name| name.trim_start_matches("pod/").to_string()))
}
