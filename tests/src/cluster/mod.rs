//! A real Kubernetes and Istio control plane for the tests: etcd, kube-apiserver (TLS, RBAC,
//! a ServiceAccount issuer so TokenRequest/TokenReview work), kube-controller-manager,
//! kube-scheduler and istiod, all built from the pinned Go modules in `tests/cluster/`
//! (`make setup-cluster`), all children of the test process.
//!
//! - One cluster per test binary ([`Cluster::shared`]), fresh namespaces per test
//!   ([`Cluster::namespace`]), so the tier stays fast.
//! - Every listen address is set explicitly (the defaults are every interface) from
//!   [`ClusterOptions::listen`]; the cluster tests run in a network namespace of their own
//!   (`tests/cluster/netns-run`), so nothing they start is reachable from outside it.
//! - Logs and state live under `target/cluster-runs/<test binary>/`, wiped when the next run
//!   of the same binary starts; the processes die with the test process (SIGKILL by
//!   parent-death signal from a thread that lives as long as the process).

pub mod inject;
mod istiod;
mod kubeconfig;
pub mod lazyxds;
pub mod meshbench;
pub mod node;
pub mod pki;
pub mod proxy;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::ports::free_port;
use crate::process::Proc;
pub use istiod::{IstiodAddrs, ISTIO_NAMESPACE};
pub use kubeconfig::Credential;
use pki::KubePki;

/// The cluster's DNS domain and istiod's cluster ID, as a default install has them.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const CLUSTER_ID: &str = "Kubernetes";
/// Service ClusterIPs: a benchmarking range (RFC 2544), never a private one. Pod IPs come
/// from the other half of 198.18.0.0/15 ([`Cluster::pod_ip`]).
pub const SERVICE_CIDR: &str = "198.19.0.0/16";

/// How long the whole control plane may take to come up on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the binaries are: `$LAZYXDS_CLUSTER_BIN`, else `target/cluster/bin`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("LAZYXDS_CLUSTER_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::workspace_root().join("target/cluster/bin"))
}

/// A control-plane binary, or an error that says how to build it.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "{} not found: run `make setup-cluster` (builds the control plane from the pinned Go \
         modules in tests/cluster/) or set LAZYXDS_CLUSTER_BIN",
        path.display()
    )
}

/// The Istio releases the install is checked against: the `istio.io/api` pins of
/// `tests/cluster/versions`, each with its CRDs (`make setup-cluster` fetches them to
/// `<bin>/istio-api-crds/<version>.yaml` through the Go module proxy).
pub fn istio_releases() -> Result<Vec<(String, PathBuf)>> {
    let pins = crate::paths::workspace_root().join("tests/cluster/versions");
    let text =
        std::fs::read_to_string(&pins).with_context(|| format!("reading {}", pins.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("istio.io/api"), Some(version)) = (words.next(), words.next()) {
            let crds = bin_dir()
                .join("istio-api-crds")
                .join(format!("{version}.yaml"));
            if !crds.is_file() {
                bail!(
                    "{} not found: run `make setup-cluster` (tests/cluster/go/fetch-crds.sh \
                     fetches the CRDs of every pinned Istio release)",
                    crds.display()
                );
            }
            out.push((version.to_string(), crds));
        }
    }
    if out.is_empty() {
        bail!("{} pins no istio.io/api release", pins.display());
    }
    Ok(out)
}

/// Where the cluster listens, and what of it runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub listen: Ipv4Addr,
    /// Only etcd and kube-apiserver: no controllers, no scheduler, no Istio CRDs, no
    /// istiod (for checks of what the API server alone accepts).
    pub api_server_only: bool,
    /// Its own run directory, `target/cluster-runs/<test binary>-<name>`, so it can run
    /// beside the binary's shared cluster.
    pub name: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            listen: Ipv4Addr::LOCALHOST,
            api_server_only: false,
            name: None,
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    listen: Ipv4Addr,
    api_url: String,
    pki: KubePki,
    admin_kubeconfig: PathBuf,
    istiod: IstiodAddrs,
    /// How long each part took to become ready, for the logs and the note.
    pub timings: Vec<(&'static str, Duration)>,
    procs: Mutex<Vec<Proc>>,
    next_namespace: AtomicU32,
}

static SHARED: OnceLock<std::result::Result<&'static Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The cluster of this test binary, started on first use. Blocking: from async code call
    /// it through `tokio::task::spawn_blocking`.
    pub fn shared() -> Result<&'static Cluster> {
        Self::shared_with(ClusterOptions::default())
    }

    /// The cluster of this test binary, started on first use with `options` (the first
    /// caller's options win: a binary uses one kind of cluster).
    pub fn shared_with(options: ClusterOptions) -> Result<&'static Cluster> {
        SHARED
            .get_or_init(|| {
                // The processes must be spawned by a thread that lives as long as the test
                // process: their parent-death signal fires when the spawning thread ends.
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name("cluster".into())
                    .spawn(move || {
                        let started = Cluster::start(&options)
                            .map(|c| &*Box::leak(Box::new(c)))
                            .map_err(|e| format!("{e:#}"));
                        let _ = tx.send(started);
                        loop {
                            std::thread::park();
                        }
                    });
                match spawned {
                    Ok(_) => rx
                        .recv()
                        .unwrap_or_else(|_| Err("the cluster thread died".into())),
                    Err(e) => Err(format!("spawning the cluster thread: {e}")),
                }
            })
            .clone()
            .map_err(|e| anyhow!("starting the test cluster: {e}"))
    }

    /// Starts everything and waits until istiod is ready.
    pub fn start(options: &ClusterOptions) -> Result<Cluster> {
        let started = Instant::now();
        let dir = run_dir(options.name.as_deref())?;
        let listen = options.listen;
        let ips = [IpAddr::V4(listen), IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let pki = KubePki::create(&dir.join("pki"), &ips, CLUSTER_DOMAIN)?;
        let mut timings = Vec::new();
        let mut procs = Vec::new();

        // etcd
        let t = Instant::now();
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_url = format!("http://{listen}:{etcd_client}");
        let mut cmd = Command::new(bin("etcd")?);
        cmd.arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls=http://{listen}:{etcd_peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{listen}:{etcd_peer}"
            ))
            .arg(format!(
                "--initial-cluster=test=http://{listen}:{etcd_peer}"
            ))
            // A throw-away cluster: durability buys nothing, fsync costs seconds.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        procs.push(Proc::spawn("etcd", &mut cmd, &dir.join("etcd.log"))?);
        wait_until(
            "etcd",
            t,
            || http_get_plain(listen, etcd_client, "/health").is_ok_and(|b| b.contains("true")),
            &mut procs,
        )?;
        timings.push(("etcd", t.elapsed()));

        // kube-apiserver
        let t = Instant::now();
        let api_port = free_port()?;
        let api_url = format!("https://{listen}:{api_port}");
        let mut cmd = Command::new(bin("kube-apiserver")?);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address={listen}"))
            .arg(format!("--advertise-address={listen}"))
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
            ))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // The `kubernetes` Service's endpoint would be a loopback address, which the
            // Endpoints API refuses; nothing here needs it.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=1");
        procs.push(Proc::spawn(
            "kube-apiserver",
            &mut cmd,
            &dir.join("kube-apiserver.log"),
        )?);
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        kubeconfig::write(
            &admin_kubeconfig,
            &api_url,
            &pki.ca,
            &Credential::Cert(&pki.admin),
        )?;
        let cluster_for_wait =
            |cmdline: &[&str]| kubectl_raw(&admin_kubeconfig, &dir, cmdline, None);
        wait_until(
            "kube-apiserver",
            t,
            || cluster_for_wait(&["get", "--raw", "/readyz"]).is_ok_and(|b| b.trim() == "ok"),
            &mut procs,
        )?;
        timings.push(("kube-apiserver", t.elapsed()));

        let mut cluster = Cluster {
            dir,
            listen,
            api_url,
            pki,
            admin_kubeconfig,
            istiod: IstiodAddrs::default(),
            timings,
            procs: Mutex::new(procs),
            next_namespace: AtomicU32::new(0),
        };
        if options.api_server_only {
            cluster.timings.push(("total", started.elapsed()));
            crate::note(format_args!(
                "API server up in {:?} ({})",
                started.elapsed(),
                cluster.dir.display()
            ));
            return Ok(cluster);
        }

        // kube-controller-manager and kube-scheduler, with their own identities (the
        // bootstrap RBAC roles of a real cluster apply to them).
        let (dir, pki, api_url) = (&cluster.dir, &cluster.pki, &cluster.api_url);
        let mut started_procs = Vec::new();
        for (name, cert) in [
            ("kube-controller-manager", &pki.controller_manager),
            ("kube-scheduler", &pki.scheduler),
        ] {
            let kc = dir.join(format!("{name}.kubeconfig"));
            kubeconfig::write(&kc, api_url, &pki.ca, &Credential::Cert(cert))?;
            let mut cmd = Command::new(bin(name)?);
            cmd.arg(format!("--kubeconfig={}", kc.display()))
                .arg(format!("--bind-address={listen}"))
                // No serving endpoint: nothing scrapes it, and it would need its own
                // authentication setup.
                .arg(format!("--secure-port={}", free_port()?))
                .arg(format!("--authentication-kubeconfig={}", kc.display()))
                .arg(format!("--authorization-kubeconfig={}", kc.display()))
                .arg("--leader-elect=false")
                .arg("--v=1");
            if name == "kube-controller-manager" {
                // Without `serviceaccount` no namespace gets its `default` ServiceAccount
                // and admission refuses pods; `root-ca-cert-publisher` gives every
                // namespace kube-root-ca.crt, as projected token volumes expect; `job` runs
                // Helm's hook Jobs (tests/tests/helm.rs).
                cmd.arg(
                    "--controllers=endpointslice,endpointslicemirroring,deployment,replicaset,\
                     garbagecollector,serviceaccount,namespace,root-ca-cert-publisher,job",
                )
                .arg(format!("--root-ca-file={}", pki.ca.display()))
                .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
                // Each controller under its own ServiceAccount and bootstrap role, as kubeadm runs it.
                .arg("--use-service-account-credentials=true")
                .arg("--concurrent-gc-syncs=5");
            }
            started_procs.push(Proc::spawn(
                name,
                &mut cmd,
                &dir.join(format!("{name}.log")),
            )?);
        }
        cluster.procs_mut().extend(started_procs);

        // Istio's CRDs, from the module istiod was built from.
        let t = Instant::now();
        let crds = std::fs::read_to_string(bin("istio-crds.yaml")?)?;
        cluster.kubectl(&["apply", "--server-side", "-f", "-"], Some(&crds))?;
        cluster.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
            None,
        )?;
        cluster.timings.push(("istio CRDs", t.elapsed()));

        let t = Instant::now();
        let istiod = istiod::start(&cluster)?;
        cluster.istiod = istiod.0;
        cluster.procs_mut().push(istiod.1);
        let addrs = cluster.istiod.clone();
        let wait_istiod = Instant::now();
        loop {
            if http_get_plain(listen, addrs.http, "/ready").is_ok() {
                break;
            }
            cluster.check_alive()?;
            if wait_istiod.elapsed() > START_TIMEOUT {
                bail!("istiod not ready after {:?}", START_TIMEOUT);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.timings.push(("istiod", t.elapsed()));
        cluster.timings.push(("total", started.elapsed()));
        crate::note(format_args!(
            "test cluster up in {:?} ({}): {:?}",
            started.elapsed(),
            cluster.dir.display(),
            cluster.timings
        ));
        Ok(cluster)
    }

    fn procs_mut(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error naming the first control-plane process that exited, with its log tail.
    pub fn check_alive(&self) -> Result<()> {
        for p in self.procs_mut().iter_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited ({status}); log {}:\n{}",
                    p.log_path().display(),
                    p.log_path().display(),
                    p.log_tail(30)
                );
            }
        }
        Ok(())
    }

    /// The PID of a control-plane process by its name (`istiod`, `etcd`, …: its log is
    /// `<name>.log`), for CPU readings from /proc.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let log = format!("{name}.log");
        self.procs_mut()
            .iter()
            .find(|p| p.log_path().file_name().is_some_and(|f| *f == *log))
            .map(Proc::pid)
    }

    /// The directory of this run (logs, PKI, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn listen(&self) -> Ipv4Addr {
        self.listen
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn ca_file(&self) -> &Path {
        &self.pki.ca
    }

    /// A kubeconfig with `system:masters` rights: the test's own.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub fn istiod(&self) -> &IstiodAddrs {
        &self.istiod
    }

    /// Replaces the mesh config (the `istio` ConfigMap istiod and the controller read) with
    /// the test cluster's own plus `extra` (top-level YAML fields).
    pub fn set_mesh_config(&self, extra: &str) -> Result<()> {
        let mesh = format!(
            "{}{extra}",
            istiod::mesh_config(&self.istiod.discovery_address())
        );
        self.apply_json(
            &[serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": ISTIO_NAMESPACE},
            "data": {"mesh": mesh, "meshNetworks": "networks: {}"}})],
        )?;
        Ok(())
    }

    /// Runs kubectl as the admin; stdout, or an error with kubectl's stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        kubectl_raw(&self.admin_kubeconfig, &self.dir, args, stdin)
    }

    /// Runs kubectl with another kubeconfig (e.g. one holding a ServiceAccount's token).
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String> {
        kubectl_raw(kubeconfig, &self.dir, args, stdin)
    }

    /// Server-side applies objects (YAML or JSON, one or many) as the test's field manager.
    pub fn apply(&self, objects: &str) -> Result<String> {
        self.kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=lazyxds-test",
                "-f",
                "-",
            ],
            Some(objects),
        )
    }

    /// Applies JSON objects.
    pub fn apply_json(&self, objects: &[Value]) -> Result<String> {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.apply(&list.to_string())
    }

    /// One object as JSON, or None if it does not exist. `resource` is what kubectl takes
    /// (`sidecars.networking.istio.io`, `pod`, …).
    pub fn get(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let mut args = vec![
            "get",
            resource,
            name,
            "-o",
            "json",
            "--ignore-not-found",
            "--show-managed-fields",
        ];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl(&args, None)?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&out).with_context(|| {
            format!("kubectl get {resource} {name}: not JSON")
        })?))
    }

    /// Every object of a resource in a namespace (`items`).
    pub fn list(&self, resource: &str, namespace: &str) -> Result<Vec<Value>> {
        let out = self.kubectl(&["get", resource, "-n", namespace, "-o", "json"], None)?;
        let list: Value = serde_json::from_str(&out)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// A fresh namespace `<prefix>-<n>` with these labels and annotations, created now;
    /// waits until its `default` ServiceAccount exists (pods need it).
    pub fn namespace(&self, prefix: &str, labels: Value, annotations: Value) -> Result<String> {
        let n = self.next_namespace.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        self.apply_json(&[serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
        })])?;
        let t = Instant::now();
        while self
            .get("serviceaccount", Some(&name), "default")?
            .is_none()
        {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("namespace {name}: no default ServiceAccount after 30 s (is kube-controller-manager running?)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(name)
    }

    /// A token for a ServiceAccount from the TokenRequest API.
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: Option<&str>,
    ) -> Result<String> {
        let mut args = vec![
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration=2h",
        ];
        let aud;
        if let Some(a) = audience {
            aud = format!("--audience={a}");
            args.push(&aud);
        }
        Ok(self.kubectl(&args, None)?.trim().to_string())
    }

    /// A kubeconfig that authenticates as a ServiceAccount (a token from TokenRequest), so
    /// whatever runs with it gets exactly that account's RBAC.
    pub fn kubeconfig_for(&self, namespace: &str, service_account: &str) -> Result<PathBuf> {
        let token = self.token(namespace, service_account, None)?;
        let path = self
            .dir
            .join(format!("{namespace}-{service_account}.kubeconfig"));
        kubeconfig::write(
            &path,
            &self.api_url,
            &self.pki.ca,
            &Credential::Token(&token),
        )?;
        Ok(path)
    }

    /// A pod IP (198.18.0.0/16, the half of the benchmarking range Services do not use),
    /// different on every call in this process.
    pub fn pod_ip(&self) -> Ipv4Addr {
        static NEXT: AtomicU32 = AtomicU32::new(10);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ipv4Addr::new(198, 18, (n >> 8) as u8, (n & 0xff) as u8)
    }

    /// Merges `status` (`{"status": …}`) into an object's status subresource, as its
    /// controller (here: the kubelet the tests play) would.
    pub fn patch_status(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        status: &Value,
    ) -> Result<()> {
        let patch = status.to_string();
        let mut args = vec![
            "patch",
            resource,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        self.kubectl(&args, None)?;
        Ok(())
    }

    /// Writes a pod's status as a kubelet would: phase Running, Ready, this IP. The real
    /// EndpointSlice controller then publishes it.
    pub fn set_pod_running(&self, namespace: &str, name: &str, ip: Ipv4Addr) -> Result<()> {
        let now = "2026-01-01T00:00:00Z";
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
            "hostIP": self.listen.to_string(), "hostIPs": [{"ip": self.listen.to_string()}],
            "startTime": now,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.patch_status("pod", Some(namespace), name, &status)
    }
}

/// `target/cluster-runs/<test binary name>[-<name>]`, emptied.
fn run_dir(name: Option<&str>) -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    // Cargo names test binaries `<name>-<hash>`: keep the name, so runs of the same test
    // replace each other.
    let binary = stem.rsplit_once('-').map_or(stem.as_str(), |(n, _)| n);
    let dir = crate::paths::workspace_root()
        .join("target/cluster-runs")
        .join(match name {
            Some(n) => format!("{binary}-{n}"),
            None => binary.to_string(),
        });
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn kubectl_raw(
    kubeconfig: &Path,
    dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    use std::io::Write;
    let mut cmd = Command::new(bin("kubectl")?);
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!(
            "--cache-dir={}",
            dir.join("kubectl-cache").display()
        ))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning kubectl")?;
    // Fed from another thread: kubectl may write (errors, say) before it has read all of a
    // large manifest, and both pipes must keep moving.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_string();
            Some(std::thread::spawn(move || pipe.write_all(input.as_bytes())))
        }
        _ => None,
    };
    let out = child.wait_with_output()?;
    if let Some(feeder) = feeder {
        // A write error (kubectl exited early) shows in its status and stderr below.
        let _ = feeder.join();
    }
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(
    what: &str,
    started: Instant,
    mut ready: impl FnMut() -> bool,
    procs: &mut [Proc],
) -> Result<()> {
    loop {
        if ready() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "{what}: {} exited ({status}) during start; log {}:\n{}",
                    p.log_path().display(),
                    p.log_path().display(),
                    p.log_tail(30)
                );
            }
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("{what} not ready after {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain-HTTP GET on `addr:port` (etcd's and istiod's health endpoints); the body if 200.
pub fn http_get_plain(addr: Ipv4Addr, port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // HTTP/1.1 (Envoy refuses 1.0 by default: its health listener on 15021 answers 426),
    // closed after the response so the body ends at EOF.
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// Polls `f` every 200 ms until it returns Some; panics with `what()` after `timeout` (for
/// the test binaries).
pub async fn eventually<T>(
    timeout: std::time::Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let t = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() <= timeout, "not after {timeout:?}: {}", what());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
