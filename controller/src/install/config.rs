//! What an install is made of: every setting `lazyxds install` has a flag for, with the
//! defaults the committed manifests under `envoyfilter/` are rendered with, and the names
//! derived from them (so every object agrees on them).

use std::collections::BTreeMap;

use lazyxds_index::RenderConfig;
use serde_json::{Map, Value};

/// The crate version: image tags and the `app.kubernetes.io/version` label follow it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where released images live.
pub const REGISTRY: &str = "ghcr.io/lazyxds";

/// The controller's image for this version.
pub fn default_controller_image() -> String {
    format!("{REGISTRY}/lazyxds:{VERSION}")
}

/// The filter's OCI image (`filter/Dockerfile`: the `.wasm` as `plugin.wasm`, FROM scratch),
/// as a WasmPlugin `url`.
pub fn default_filter_image() -> String {
    format!("oci://{REGISTRY}/lazyxds-filter:{VERSION}")
}

/// Default controller namespace.
pub const DEFAULT_NAMESPACE: &str = "lazyxds-system";
/// Name of the controller's Deployment, ServiceAccount, RBAC objects and gRPC Service (the
/// filter's default `controller_cluster` is this Service's Istio cluster).
pub const CONTROLLER_NAME: &str = "lazyxds";
/// Default name of the gateway's Deployment and Service.
pub const DEFAULT_GATEWAY_NAME: &str = "lazyxds-gateway";

/// Name of the Service port gateways stream edges to. Istio must recognise the protocol
/// from the name (`grpc-*`) so the gateway's cluster for it speaks HTTP/2.
pub const GRPC_PORT_NAME: &str = "grpc-edges";
/// Name of the controller's HTTP port (health, metrics, debug).
pub const HTTP_PORT_NAME: &str = "http-monitor";
/// Name of the gateway Service's port. `http2`: lazy sidecars speak HTTP/2 to
/// the gateway (wrapped in mTLS by the DestinationRule; HTTP/1.1 calls are carried over it
/// too), so first gRPC calls reach it as gRPC; the gateway terminates it.
pub const EGRESS_PORT_NAME: &str = "http2-egress";
/// Its `appProtocol` (Istio reads it before the name).
pub const EGRESS_APP_PROTOCOL: &str = "http2";
/// The Istio gateway's status port (readiness).
pub const STATUS_PORT: u16 = 15021;

/// The ConfigMap holding the module, its key, and where the gateway mounts it.
pub const MODULE_CONFIGMAP: &str = "lazyxds-filter";
pub const MODULE_KEY: &str = "lazyxds_filter.wasm";
pub const MODULE_MOUNT_DIR: &str = "/etc/lazyxds/filter";
/// Pod-template annotation with the module's sha256: a new module rolls the gateway.
pub const MODULE_HASH_ANNOTATION: &str = "lazyxds.io/module-sha256";

/// Largest module `install` puts in a ConfigMap (Kubernetes objects stop at 1 MiB, and the
/// base64 text is a third bigger than the module).
pub const MAX_CONFIGMAP_MODULE_BYTES: usize = 700 * 1024;

/// `root_id` / `vm_id` / WasmPlugin `pluginName` of the filter.
pub const PLUGIN_NAME: &str = "lazyxds";

/// Labels every object gets.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "lazyxds");

/// How the gateway gets the Wasm module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Module {
    /// The module in a ConfigMap (`binaryData`), mounted into the gateway and loaded by an
    /// EnvoyFilter; its sha256 is a pod-template annotation, so a new module rolls the
    /// gateway. `None`: render without the ConfigMap and the annotation (the committed
    /// `envoyfilter/install/`; create the ConfigMap yourself).
    ConfigMap(Option<Vec<u8>>),
    /// A `WasmPlugin`: istio-agent fetches `url` (`oci://…` or `https://…`) and checks
    /// `sha256` (required for http(s)).
    WasmPlugin { url: String, sha256: Option<String> },
}

/// What happens to requests when the filter's VM fails (Envoy's
/// `PluginConfig.failure_policy`, Istio's `WasmPlugin.failStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailurePolicy {
    /// A crashed VM is replaced and requests go on (the filter never fails a request on
    /// purpose; a panic must not turn into 503s on that worker forever).
    FailReload,
    /// The filter is skipped after a fatal error (no edges, no first-call rewrite).
    FailOpen,
    /// Requests fail with 503 after a fatal error.
    FailClosed,
}

impl FailurePolicy {
    /// Envoy's enum value name.
    pub fn envoy(self) -> &'static str {
        match self {
            FailurePolicy::FailReload => "FAIL_RELOAD",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailClosed => "FAIL_CLOSED",
        }
    }

    /// Istio's WasmPlugin `failStrategy` name.
    pub fn istio(self) -> &'static str {
        match self {
            FailurePolicy::FailReload => "FAIL_RELOAD",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailClosed => "FAIL_CLOSE",
        }
    }
}

/// An Istio release, `MAJOR.MINOR` (a patch given is ignored: no rule here depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IstioVersion {
    pub major: u32,
    pub minor: u32,
}

impl IstioVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        IstioVersion { major, minor }
    }

    /// `1.27`, `1.27.3`, `v1.27`; anything else is an error saying what is wanted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?}: want an Istio release as MAJOR.MINOR, e.g. 1.27");
        let t = text.strip_prefix('v').unwrap_or(text);
        let mut parts = t.split('.');
        let mut number = || -> Result<u32, String> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let (major, minor) = (number()?, number()?);
        match parts.next() {
            None => {}
            Some(patch) if !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()) => {}
            Some(_) => return Err(bad()),
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(IstioVersion { major, minor })
    }
}

impl std::fmt::Display for IstioVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The oldest Istio whose CRDs the install, the Sidecars and the gateway's objects are
/// applied against (`tests/cluster/versions`, `istio.io/api` lines): `--istio-version`
/// refuses older ones.
pub const OLDEST_ISTIO: IstioVersion = IstioVersion::new(1, 24);

/// The first Istio whose WasmPlugin CRD accepts `failStrategy: FAIL_RELOAD` (1.24's and
/// 1.26's enum is `FAIL_CLOSE`, `FAIL_OPEN`: the API server refuses the object).
pub const WASM_PLUGIN_FAIL_RELOAD_SINCE: IstioVersion = IstioVersion::new(1, 27);

/// The controller Deployment's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSettings {
    pub image: String,
    pub replicas: i32,
    pub grpc_port: u16,
    pub http_port: u16,
    pub log_level: String,
    /// `--dry-run`: compute and show the plan, write nothing (start here).
    pub dry_run: bool,
    /// Give the controller an Istio sidecar (mTLS from the gateway's filter to it).
    pub in_mesh: bool,
    /// More `LAZYXDS_*` settings for `lazyxds run`, as environment variables.
    pub env: BTreeMap<String, String>,
}

/// The lazy egress gateway's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    pub name: String,
    /// Where scoped workloads send unknown HTTP: the gateway Service's port and its listener's.
    pub egress_proxy_port: u16,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Envoy worker threads per pod (Istio's proxy `concurrency`): one controller stream
    /// each.
    pub concurrency: u32,
    /// HPA target: average CPU utilisation, percent of the request.
    pub target_cpu_percent: i32,
    /// Istio revision to inject (`istio.io/rev`); None: the default revision.
    pub revision: Option<String>,
}

/// The filter's plugin configuration (see the README's table).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSettings {
    pub flush_interval_ms: u64,
    pub refresh_interval_s: u64,
    /// None: chosen by [`InstallConfig::failure_policy`].
    pub failure_policy: Option<FailurePolicy>,
    /// More plugin keys, merged last (checked by the filter's own parser).
    pub extra: Map<String, Value>,
}

/// Everything `lazyxds install` renders from.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallConfig {
    pub namespace: String,
    /// Render the Namespace object.
    pub create_namespace: bool,
    pub cluster_domain: String,
    /// The mesh's trust domain: SPIFFE ids are `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub trust_domain: String,
    pub controller: ControllerSettings,
    pub gateway: GatewaySettings,
    pub filter: FilterSettings,
    pub module: Module,
    /// The mesh's Istio release, when known: what the WasmPlugin may say depends on it.
    pub istio_version: Option<IstioVersion>,
    /// Render the ValidatingAdmissionPolicy keeping the controller's writes to objects
    /// labelled ours (Kubernetes ≥ 1.30 serves it).
    pub admission_policy: bool,
}

impl Default for InstallConfig {
    /// The defaults, without a module (`Module::ConfigMap(None)`).
    fn default() -> Self {
        InstallConfig {
            namespace: DEFAULT_NAMESPACE.into(),
            create_namespace: true,
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            controller: ControllerSettings {
                image: default_controller_image(),
                replicas: 2,
                grpc_port: 18000,
                http_port: 18080,
                log_level: "info".into(),
                dry_run: false,
                in_mesh: true,
                env: BTreeMap::new(),
            },
            gateway: GatewaySettings {
                name: DEFAULT_GATEWAY_NAME.into(),
                egress_proxy_port: 8080,
                min_replicas: 2,
                max_replicas: 10,
                concurrency: 2,
                target_cpu_percent: 60,
                revision: None,
            },
            filter: FilterSettings {
                flush_interval_ms: 20,
                refresh_interval_s: lazyxds_filter_core::Config::default().refresh_interval_s,
                failure_policy: None,
                extra: Map::new(),
            },
            module: Module::ConfigMap(None),
            istio_version: None,
            admission_policy: true,
        }
    }
}

impl InstallConfig {
    /// `<name>.<namespace>.svc.<domain>`
    pub fn service_fqdn(&self, name: &str) -> String {
        format!("{name}.{}.svc.{}", self.namespace, self.cluster_domain)
    }

    /// Where scoped workloads send unknown HTTP: the gateway Service's host.
    pub fn gateway_host(&self) -> String {
        self.service_fqdn(&self.gateway.name)
    }

    /// The Envoy cluster istiod gives the controller's gRPC Service on every proxy.
    pub fn controller_cluster(&self) -> String {
        format!(
            "outbound|{}||{}",
            self.controller.grpc_port,
            self.service_fqdn(CONTROLLER_NAME)
        )
    }

    /// Labels selecting the gateway pods (Deployment, Service, Gateway, EnvoyFilter,
    /// WasmPlugin): Istio's convention for gateways.
    pub fn gateway_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("istio".to_string(), self.gateway.name.clone())])
    }

    /// The Istio principal of a service account of the install's namespace, as an
    /// AuthorizationPolicy names it: `<trust domain>/ns/<namespace>/sa/<sa>`.
    pub fn principal(&self, service_account: &str) -> String {
        format!(
            "{}/ns/{}/sa/{service_account}",
            self.trust_domain, self.namespace
        )
    }

    /// The SPIFFE id a workload certificate carries for that service account.
    pub fn spiffe_id(&self, service_account: &str) -> String {
        format!("spiffe://{}", self.principal(service_account))
    }

    /// Labels selecting the controller's pods.
    pub fn controller_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            CONTROLLER_NAME.to_string(),
        )])
    }

    /// What happens to requests when the filter fails: the one set, else `FAIL_RELOAD`
    /// (a crashed VM is replaced), except in a WasmPlugin for an Istio older than
    /// [`WASM_PLUGIN_FAIL_RELOAD_SINCE`] or not named, whose CRD refuses it: `FAIL_OPEN`
    /// there. The EnvoyFilter's `failure_policy` is Envoy's own field (Envoy ≥ 1.31, every
    /// istio-proxy of Istio ≥ 1.23), which no CRD checks.
    pub fn failure_policy(&self) -> FailurePolicy {
        match (self.filter.failure_policy, &self.module) {
            (Some(p), _) => p,
            (None, Module::ConfigMap(_)) => FailurePolicy::FailReload,
            (None, Module::WasmPlugin { .. }) => {
                if self.wasm_plugin_has_fail_reload() {
                    FailurePolicy::FailReload
                } else {
                    FailurePolicy::FailOpen
                }
            }
        }
    }

    /// Does the mesh's WasmPlugin CRD know `FAIL_RELOAD`? Unknown release: no.
    pub fn wasm_plugin_has_fail_reload(&self) -> bool {
        self.istio_version
            .is_some_and(|v| v >= WASM_PLUGIN_FAIL_RELOAD_SINCE)
    }

    /// Where the gateway finds the module (ConfigMap delivery).
    pub fn module_path(&self) -> String {
        format!("{MODULE_MOUNT_DIR}/{MODULE_KEY}")
    }

    /// How the controller (and the gateway routing objects) are configured for this
    /// install.
    pub fn render_config(&self) -> RenderConfig {
        RenderConfig {
            gateway_host: self.gateway_host(),
            gateway_namespace: self.namespace.clone(),
            egress_proxy_port: self.gateway.egress_proxy_port,
            gateway_selector: self.gateway_selector().into(),
            ..RenderConfig::default()
        }
    }
}
