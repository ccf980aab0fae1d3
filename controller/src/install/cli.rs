//! The flags of `lazyxds install` and `lazyxds uninstall`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::config::{self, FailurePolicy, InstallConfig, IstioVersion, Module};
use super::{read_module, InstallError, UninstallConfig};

/// The built module, relative to the workspace (what `make wasm` writes).
pub const DEFAULT_WASM: &str = "target/wasm32-wasip1/wasm/lazyxds_filter.wasm";

/// `lazyxds install`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub settings: Settings,

    /// The filter module put in the gateway's ConfigMap.
    #[arg(long, env = "LAZYXDS_WASM", default_value = DEFAULT_WASM)]
    pub wasm: PathBuf,

    /// Render without the module: no ConfigMap, no module hash on the gateway (create the
    /// ConfigMap `lazyxds-filter` yourself). `envoyfilter/install/` is this output.
    #[arg(long, conflicts_with = "module_url")]
    pub no_module: bool,

    /// Write one file per part (namespace, controller, module, filter, routing, gateway)
    /// into this directory instead of one stream on stdout.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// `lazyxds uninstall`.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub settings: Settings,

    /// Do not read the cluster: the Sidecars (and routes) the controller wrote are not
    /// listed (delete them first yourself, see the output's header).
    #[arg(long)]
    pub offline: bool,

    /// Also delete the namespace (off: it may hold more than lazyxds).
    #[arg(long, conflicts_with = "wait")]
    pub delete_namespace: bool,

    /// Act on the cluster instead of printing (the Helm chart's pre-delete hook runs this):
    /// set the kill switch, wait until the controller has deleted every Sidecar and
    /// catch-all EnvoyFilter of ours, stop it (its Deployment scaled to 0), then delete
    /// what else it wrote (the gateway's routes, its Lease). The install's own objects are
    /// left to whoever installed them (Helm deletes the chart's next).
    #[arg(long, conflicts_with = "offline")]
    pub wait: bool,

    /// With --wait: how long the controller has to delete them (then it is stopped and what
    /// it left is deleted directly, Sidecars first), and how long its pods have to end.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub wait_timeout_secs: u64,
}

/// The settings both commands share (uninstall needs the names install used).
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Namespace of the controller and the gateway.
    #[arg(long, default_value = config::DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Do not render the Namespace object (it exists already).
    #[arg(long)]
    pub no_create_namespace: bool,

    /// The mesh's DNS suffix.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The mesh's trust domain (its mesh config's `trustDomain`): the controller accepts
    /// edge streams only from `spiffe://<trust domain>/ns/<namespace>/sa/<gateway>`.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,

    /// The controller's image (default: this version's).
    #[arg(long, default_value_t = config::default_controller_image())]
    pub controller_image: String,

    /// Controller replicas (one leader writes; the others take over within the Lease).
    #[arg(long, default_value_t = 2)]
    pub controller_replicas: i32,

    /// The controller's gRPC port (gateways stream edges to it).
    #[arg(long, default_value_t = 18000)]
    pub grpc_port: u16,

    /// The controller's HTTP port (/healthz, /readyz, /debug/*).
    #[arg(long, default_value_t = 18080)]
    pub http_port: u16,

    /// The controller's log filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Start the controller with --dry-run: it computes and shows the plan
    /// (/debug/plan), writes nothing. Start here.
    #[arg(long)]
    pub controller_dry_run: bool,

    /// No Istio sidecar for the controller (the gateway then reaches it in plaintext).
    /// Needs --controller-env LAZYXDS_EDGE_AUTH=mtls|token and the files that mode reads,
    /// mounted by you: the install's own check (x-forwarded-client-cert) needs the sidecar.
    #[arg(long)]
    pub controller_outside_mesh: bool,

    /// More settings of `lazyxds run`, as LAZYXDS_NAME=VALUE (repeatable), e.g.
    /// LAZYXDS_TTL_SECS=604800.
    #[arg(long = "controller-env", value_name = "LAZYXDS_NAME=VALUE", value_parser = parse_env)]
    pub controller_env: Vec<(String, String)>,

    /// Name of the gateway's Deployment and Service.
    #[arg(long, default_value = config::DEFAULT_GATEWAY_NAME)]
    pub gateway_name: String,

    /// The gateway's port, where scoped workloads send unknown HTTP (Service and listener).
    #[arg(long, default_value_t = 8080)]
    pub egress_proxy_port: u16,

    /// The gateway autoscaler's floor (it is on every opted-in workload's first calls).
    #[arg(long, default_value_t = 2)]
    pub gateway_min_replicas: i32,

    /// The gateway autoscaler's ceiling.
    #[arg(long, default_value_t = 10)]
    pub gateway_max_replicas: i32,

    /// Envoy worker threads per gateway pod (Istio's proxy `concurrency`; unset, Envoy
    /// would start one per core of the node). Each worker streams to the controller, so
    /// this and --gateway-max-replicas size the controller's stream cap.
    #[arg(long, default_value_t = 2)]
    pub gateway_concurrency: u32,

    /// The gateway autoscaler's target: average CPU, percent of the request.
    #[arg(long, default_value_t = 60)]
    pub gateway_target_cpu: i32,

    /// Istio revision to inject the gateway (and the controller) with.
    #[arg(long)]
    pub revision: Option<String>,

    /// The filter's flush interval (a new edge reaches the controller within it).
    #[arg(long, default_value_t = 20)]
    pub flush_interval_ms: u64,

    /// A known edge is re-reported at most this often.
    #[arg(long, default_value_t = lazyxds_filter_core::Config::default().refresh_interval_s)]
    pub refresh_interval_s: u64,

    /// What happens to requests when the filter's VM fails (default FAIL_RELOAD; in a
    /// WasmPlugin FAIL_OPEN unless --istio-version is 1.27 or newer: older CRDs refuse
    /// FAIL_RELOAD).
    #[arg(long, value_enum)]
    pub failure_policy: Option<FailurePolicy>,

    /// Leave out the ValidatingAdmissionPolicy that lets the controller write only objects
    /// labelled ours (for Kubernetes older than 1.30, which does not serve it: then only
    /// the controller's own code keeps it off users' Sidecars).
    #[arg(long)]
    pub no_admission_policy: bool,

    /// The mesh's Istio release (MAJOR.MINOR): what the WasmPlugin may say depends on it.
    #[arg(long, value_name = "MAJOR.MINOR", value_parser = IstioVersion::parse)]
    pub istio_version: Option<IstioVersion>,

    /// More plugin configuration keys, as a JSON object (checked by the filter's parser),
    /// e.g. '{"max_edges":50000}'.
    #[arg(long, value_name = "JSON")]
    pub filter_config: Option<String>,

    /// Load the module with a WasmPlugin from this URL instead of a ConfigMap:
    /// oci://REGISTRY/REPO:TAG (e.g. the image `filter/Dockerfile` builds) or
    /// https://…/lazyxds_filter.wasm (then --module-sha256 is required).
    #[arg(long, value_name = "URL")]
    pub module_url: Option<String>,

    /// sha256 of the module at --module-url (64 hex digits).
    #[arg(long, requires = "module_url")]
    pub module_sha256: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("LAZYXDS_") => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: want LAZYXDS_NAME=VALUE")),
    }
}

impl Settings {
    /// The install these flags describe, with `module` as the module.
    pub fn to_config(&self, module: Module) -> Result<InstallConfig, InstallError> {
        let extra: Map<String, Value> = match &self.filter_config {
            None => Map::new(),
            Some(text) => match serde_json::from_str(text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(InstallError::Setting {
                        flag: "--filter-config",
                        message: "must be a JSON object".into(),
                    })
                }
                Err(e) => {
                    return Err(InstallError::Setting {
                        flag: "--filter-config",
                        message: e.to_string(),
                    })
                }
            },
        };
        let module = match &self.module_url {
            Some(url) => Module::WasmPlugin {
                url: url.clone(),
                sha256: self.module_sha256.clone(),
            },
            None => module,
        };
        Ok(InstallConfig {
            namespace: self.namespace.clone(),
            create_namespace: !self.no_create_namespace,
            cluster_domain: self.cluster_domain.clone(),
            trust_domain: self.trust_domain.clone(),
            controller: config::ControllerSettings {
                image: self.controller_image.clone(),
                replicas: self.controller_replicas,
                grpc_port: self.grpc_port,
                http_port: self.http_port,
                log_level: self.log_level.clone(),
                dry_run: self.controller_dry_run,
                in_mesh: !self.controller_outside_mesh,
                env: self
                    .controller_env
                    .iter()
                    .cloned()
                    .collect::<BTreeMap<_, _>>(),
            },
            gateway: config::GatewaySettings {
                name: self.gateway_name.clone(),
                egress_proxy_port: self.egress_proxy_port,
                min_replicas: self.gateway_min_replicas,
                max_replicas: self.gateway_max_replicas,
                concurrency: self.gateway_concurrency,
                target_cpu_percent: self.gateway_target_cpu,
                revision: self.revision.clone(),
            },
            filter: config::FilterSettings {
                flush_interval_ms: self.flush_interval_ms,
                refresh_interval_s: self.refresh_interval_s,
                failure_policy: self.failure_policy,
                extra,
            },
            module,
            istio_version: self.istio_version,
            admission_policy: !self.no_admission_policy,
        })
    }
}

impl InstallArgs {
    /// The install to render; reads the module unless it is not needed.
    pub fn to_config(&self) -> Result<InstallConfig, InstallError> {
        let module = if self.no_module || self.settings.module_url.is_some() {
            Module::ConfigMap(None)
        } else {
            Module::ConfigMap(Some(read_module(&self.wasm)?))
        };
        self.settings.to_config(module)
    }
}

impl UninstallArgs {
    pub fn to_config(&self) -> Result<UninstallConfig, InstallError> {
        Ok(UninstallConfig {
            install: self.settings.to_config(Module::ConfigMap(None))?,
            delete_namespace: self.delete_namespace,
        })
    }
}
