//! `lazyxds install` / `uninstall`: the Kubernetes objects that put lazyxds into an Istio
//! mesh, rendered from typed structs (k8s-openapi for Kubernetes kinds, [`istio`] for
//! Istio's, shared with the controller), pure: no I/O but reading nothing, writing nothing.
//!
//! - [`config`]: every setting, its default, and the names derived from them.
//! - the controller: ServiceAccount, least-privilege RBAC ([`rbac`]) and the admission
//!   policy keeping its writes to our own objects ([`admission`]), Deployment (2 replicas,
//!   probes, non-root), the gRPC Service selecting the leader, a monitoring Service, a
//!   PodDisruptionBudget.
//! - the lazy egress gateway: Istio gateway injection (`image: auto`), its Service, HPA,
//!   PodDisruptionBudget, a preStop that drains, the module.
//! - the module: a ConfigMap mounted into the gateway plus the EnvoyFilter loading it, or a
//!   WasmPlugin.
//! - the gateway routing's static objects (`lazyxds_index::gateway`): Gateway and
//!   DestinationRule (ISTIO_MUTUAL), the catch-all EnvoyFilter, the unknown-host answer.
//!
//! The YAML under `envoyfilter/install/` and `envoyfilter/wasmplugin/` is this output with
//! the defaults (`make manifests`); a test fails when they differ.

pub mod admission;
pub mod cli;
pub mod cluster;
pub mod config;
mod controller;
mod filter;
mod gateway;
pub mod rbac;
mod routing;
mod uninstall;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

pub use config::{FailurePolicy, InstallConfig, IstioVersion, Module};
pub use filter::plugin_config;
pub use lazyxds_index::istio;
pub use uninstall::{
    drain_step, scoping, uninstall, uninstall_yaml, written_by_controller, DrainStep, ObjectRef,
    UninstallConfig,
};

/// Why an install cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the filter module {path} does not exist: build it with `make wasm`, pass --wasm PATH, or deliver it from a registry with --module-url")]
    ModuleMissing { path: String },
    #[error("cannot read the filter module {path}: {message}")]
    ModuleUnreadable { path: String, message: String },
    #[error("the filter module {path} is not a WebAssembly module (no \\0asm header)")]
    NotWasm { path: String },
    #[error("the filter module is {size} bytes: more than {max} cannot go in a ConfigMap; deliver it with --module-url instead")]
    ModuleTooBig { size: usize, max: usize },
    #[error("{0}")]
    PluginConfig(String),
    #[error("invalid setting {flag}: {message}")]
    Setting { flag: &'static str, message: String },
    #[error("cannot render {what}: {message}")]
    Render { what: String, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// Which part of the install an object belongs to; each part is one file of `--out-dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Namespace,
    Controller,
    /// The module ConfigMap (binary: never committed).
    Module,
    /// The EnvoyFilter loading the module, or the WasmPlugin.
    Filter,
    /// The gateway routing's static objects.
    Routing,
    Gateway,
}

impl Component {
    /// Every component, in apply order: the namespace, the controller, then what the
    /// gateway pods need before they start.
    pub const ALL: [Component; 6] = [
        Component::Namespace,
        Component::Controller,
        Component::Module,
        Component::Filter,
        Component::Routing,
        Component::Gateway,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Component::Namespace => "namespace.yaml",
            Component::Controller => "controller.yaml",
            Component::Module => "module.yaml",
            Component::Filter => "filter.yaml",
            Component::Routing => "routing.yaml",
            Component::Gateway => "gateway.yaml",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Component::Namespace => "the namespace of the controller and the gateway",
            Component::Controller => {
                "the controller: ServiceAccount, RBAC (and a Role reading Istio's mesh config \
                 in istio-system), the ValidatingAdmissionPolicy keeping its writes to objects \
                 labelled ours, the AuthorizationPolicy letting only the gateway stream edges \
                 to it, Deployment, Services, PodDisruptionBudget"
            }
            Component::Module => {
                "the filter module the gateway mounts (too big for client-side apply's \
                 last-applied annotation: use `kubectl apply --server-side`)"
            }
            Component::Filter => "what loads the filter module into the gateway",
            Component::Routing => {
                "the gateway routing's static objects: Gateway and DestinationRule \
                 (ISTIO_MUTUAL), catch-all EnvoyFilter, unknown-host answer"
            }
            Component::Gateway => {
                "the lazy egress gateway: AuthorizationPolicy (mesh identities only), \
                 ServiceAccount, Service, Deployment (Istio gateway injection), \
                 PodDisruptionBudget, HorizontalPodAutoscaler"
            }
        }
    }
}

/// One object of the install.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub component: Component,
    pub object: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }
}

/// A rendered install: every object, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct Install {
    pub objects: Vec<Manifest>,
}

impl Install {
    /// One multi-document YAML stream, for `kubectl apply --server-side -f -`.
    pub fn to_yaml(&self) -> Result<String, InstallError> {
        let mut out = header("lazyxds install", None);
        for m in &self.objects {
            out.push_str(&document(&m.object)?);
        }
        Ok(out)
    }

    /// One YAML file per component present: (file name, text).
    pub fn files(&self) -> Result<Vec<(&'static str, String)>, InstallError> {
        let mut out = Vec::new();
        for c in Component::ALL {
            let mut text = String::new();
            for m in self.objects.iter().filter(|m| m.component == c) {
                text.push_str(&document(&m.object)?);
            }
            if !text.is_empty() {
                out.push((
                    c.file_name(),
                    header("lazyxds install --out-dir", Some(c)) + &text,
                ));
            }
        }
        Ok(out)
    }

    /// Writes [`Install::files`] into `dir` (created if needed), and removes the files of
    /// components this install does not have (e.g. `module.yaml` after switching to a
    /// WasmPlugin). Other files are left alone.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<&'static str>, InstallError> {
        let err = |path: &Path, e: std::io::Error| InstallError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let files = self.files()?;
        for c in Component::ALL {
            let path = dir.join(c.file_name());
            if !files.iter().any(|(n, _)| *n == c.file_name()) && path.exists() {
                std::fs::remove_file(&path).map_err(|e| err(&path, e))?;
            }
        }
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| err(&path, e))?;
            written.push(name);
        }
        Ok(written)
    }

    /// The objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Manifest> + 'a {
        self.objects.iter().filter(move |m| m.kind() == kind)
    }
}

fn header(command: &str, component: Option<Component>) -> String {
    let mut h = format!(
        "# Generated by `{command}` (lazyxds {}). Do not edit: change the flags and render\n\
         # again (`make manifests` for the committed copies). Apply with\n\
         #   kubectl apply --server-side -f …\n",
        config::VERSION
    );
    if let Some(c) = component {
        h.push_str(&format!("# In this file: {}.\n", c.describe()));
    }
    h
}

fn document(object: &Value) -> Result<String, InstallError> {
    let text = serde_norway::to_string(object).map_err(|e| InstallError::Render {
        what: format!(
            "{} {}",
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default()
        ),
        message: e.to_string(),
    })?;
    Ok(format!("---\n{text}"))
}

/// Serializes a typed object into the install's value form.
fn to_value<T: Serialize>(what: &str, object: &T) -> Result<Value, InstallError> {
    serde_json::to_value(object).map_err(|e| InstallError::Render {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Metadata every object of a component gets.
fn metadata(config: &InstallConfig, name: &str, namespaced: bool, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| config.namespace.clone()),
        labels: Some(common_labels(component)),
        ..ObjectMeta::default()
    }
}

/// [`metadata`] of an Istio object (always namespaced).
fn istio_metadata(config: &InstallConfig, name: &str, component: &str) -> istio::Metadata {
    istio::Metadata {
        name: name.to_string(),
        namespace: config.namespace.clone(),
        labels: common_labels(component),
        ..istio::Metadata::default()
    }
}

/// Annotations of our EnvoyFilters ([`istio::ENVOY_FILTER_ANALYZE_SUPPRESS`]): ours are the
/// parts no stable API offers (the module from a ConfigMap, the catch-all's dynamic forward
/// proxy), checked instead by `envoy --mode validate` and by the real istiod in the tests.
fn envoy_filter_annotations() -> BTreeMap<String, String> {
    let (key, value) = istio::ENVOY_FILTER_ANALYZE_SUPPRESS;
    BTreeMap::from([(key.to_string(), value.to_string())])
}

fn common_labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (config::PART_OF.0.to_string(), config::PART_OF.1.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (
            "app.kubernetes.io/version".to_string(),
            config::VERSION.to_string(),
        ),
    ])
}

/// Renders the whole install.
pub fn render(config: &InstallConfig) -> Result<Install, InstallError> {
    check(config)?;
    let mut objects = Vec::new();
    let mut push = |component: Component, values: Vec<Value>| {
        objects.extend(
            values
                .into_iter()
                .map(|object| Manifest { component, object }),
        );
    };
    if config.create_namespace {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(config.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (config::PART_OF.0.to_string(), config::PART_OF.1.to_string()),
                    // Injection by the namespace (Istio's `rev.namespace` webhook) for the
                    // revision the pods ask for; `istioctl analyze` reports a namespace
                    // with neither this nor `istio-injection` (IST0102). A pod labelled
                    // `sidecar.istio.io/inject: "false"` (`--controller-outside-mesh`)
                    // stays out.
                    (
                        "istio.io/rev".to_string(),
                        config
                            .gateway
                            .revision
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        push(Component::Namespace, vec![to_value("Namespace", &ns)?]);
    }
    push(Component::Controller, controller::objects(config)?);
    if let Module::ConfigMap(Some(wasm)) = &config.module {
        push(
            Component::Module,
            vec![gateway::module_configmap(config, wasm)?],
        );
    }
    push(Component::Filter, vec![filter::object(config)?]);
    push(Component::Routing, routing::objects(config)?);
    push(Component::Gateway, gateway::objects(config)?);
    Ok(Install { objects })
}

/// Settings no object can be rendered with.
fn check(config: &InstallConfig) -> Result<(), InstallError> {
    let bad = |flag, message: &str| {
        Err(InstallError::Setting {
            flag,
            message: message.to_string(),
        })
    };
    use lazyxds_index::host::{is_dns_domain, is_dns_label};
    if !is_dns_label(&config.namespace) {
        return bad("--namespace", "must be a DNS label (a-z, 0-9, '-')");
    }
    if !is_dns_label(&config.gateway.name) || config.gateway.name == config::CONTROLLER_NAME {
        return bad(
            "--gateway-name",
            "must be a DNS label other than the controller's name `lazyxds`",
        );
    }
    if !is_dns_domain(&config.cluster_domain) {
        return bad("--cluster-domain", "must be a DNS name");
    }
    if !is_dns_domain(&config.trust_domain) {
        return bad(
            "--trust-domain",
            "must be a DNS name (the mesh config's trustDomain)",
        );
    }
    if !config.controller.in_mesh && !config.controller.env.contains_key("LAZYXDS_EDGE_AUTH") {
        return bad(
            "--controller-outside-mesh",
            "without its sidecar the controller cannot check the gateway's mesh identity: \
             give --controller-env LAZYXDS_EDGE_AUTH=mtls or token, with the files that \
             mode reads (LAZYXDS_EDGE_TLS_CERT, … or LAZYXDS_EDGE_TOKEN_FILE) mounted into \
             the controller pod, and the gateway's side (README, \"Who may report edges\")",
        );
    }
    if config.controller.replicas < 1 {
        return bad("--controller-replicas", "must be at least 1");
    }
    if config.gateway.min_replicas < 1 || config.gateway.max_replicas < config.gateway.min_replicas
    {
        return bad(
            "--gateway-max-replicas",
            "need 1 <= --gateway-min-replicas <= --gateway-max-replicas",
        );
    }
    if !(1..=64).contains(&config.gateway.concurrency) {
        return bad("--gateway-concurrency", "must be 1..=64 worker threads");
    }
    if !(1..=100).contains(&config.gateway.target_cpu_percent) {
        return bad("--gateway-target-cpu", "must be a percentage (1..=100)");
    }
    let ports = [
        config.controller.grpc_port,
        config.controller.http_port,
        config.gateway.egress_proxy_port,
    ];
    if ports.contains(&0) {
        return bad("--*-port", "ports must not be 0");
    }
    if config.controller.grpc_port == config.controller.http_port {
        return bad("--http-port", "must differ from --grpc-port");
    }
    // Istio's own ports on the gateway pod.
    if (15000..=15099).contains(&config.gateway.egress_proxy_port) {
        return bad(
            "--egress-proxy-port",
            "15000-15099 are the Istio proxy's own ports",
        );
    }
    for key in config.controller.env.keys() {
        if !key.starts_with("LAZYXDS_") {
            return bad(
                "--controller-env",
                &format!("{key}: only LAZYXDS_* settings of `lazyxds run`"),
            );
        }
    }
    if let Some(v) = config.istio_version {
        if v < config::OLDEST_ISTIO {
            return bad(
                "--istio-version",
                &format!(
                    "{v}: the oldest Istio lazyxds is checked against is {}",
                    config::OLDEST_ISTIO
                ),
            );
        }
    }
    if matches!(config.module, Module::WasmPlugin { .. })
        && config.failure_policy() == FailurePolicy::FailReload
        && !config.wasm_plugin_has_fail_reload()
    {
        return bad(
            "--failure-policy",
            &format!(
                "FAIL_RELOAD is in the WasmPlugin CRD from Istio {} on (older ones refuse the \
                 object): pass --istio-version with the mesh's release, or FAIL_OPEN / FAIL_CLOSED",
                config::WASM_PLUGIN_FAIL_RELOAD_SINCE
            ),
        );
    }
    if let Module::WasmPlugin { url, sha256 } = &config.module {
        let scheme = url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("oci" | "http" | "https")) {
            return bad(
                "--module-url",
                "must start with oci://, https:// or http://",
            );
        }
        if matches!(scheme, Some("http" | "https")) && sha256.is_none() {
            return bad(
                "--module-sha256",
                "is required with an http(s) --module-url (istio-agent checks the download)",
            );
        }
        if let Some(h) = sha256 {
            if h.len() != 64
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return bad("--module-sha256", "must be 64 lowercase hex digits");
            }
        }
    }
    // The plugin configuration is the filter's to judge.
    filter::checked_plugin_config(config)?;
    Ok(())
}

/// Reads the module for a ConfigMap install: it must exist, look like Wasm and fit.
pub fn read_module(path: &Path) -> Result<Vec<u8>, InstallError> {
    let shown = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InstallError::ModuleMissing { path: shown })
        }
        Err(e) => {
            return Err(InstallError::ModuleUnreadable {
                path: shown,
                message: e.to_string(),
            })
        }
    };
    if !bytes.starts_with(b"\0asm") {
        return Err(InstallError::NotWasm { path: shown });
    }
    if bytes.len() > config::MAX_CONFIGMAP_MODULE_BYTES {
        return Err(InstallError::ModuleTooBig {
            size: bytes.len(),
            max: config::MAX_CONFIGMAP_MODULE_BYTES,
        });
    }
    Ok(bytes)
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
