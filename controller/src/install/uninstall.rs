//! `lazyxds uninstall`: what to delete, in an order that never leaves a workload without a
//! way out: the controller first (nothing writes any more), then every Sidecar we own
//! (workloads get the full mesh config back), then the routing and the gateway.
//!
//! `uninstall --wait` (the Helm chart's pre-delete hook) acts instead: the decisions it
//! takes from what it lists are here ([`written_by_controller`], [`drain_step`]); the
//! cluster calls are in `cluster.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use super::config::{InstallConfig, MODULE_CONFIGMAP};
use super::filter::FILTER_OBJECT;
use super::istio::{ENVOY_FILTER_API, WASM_PLUGIN_API};
use super::{render, Component, InstallError};

/// An object to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }

    fn of(object: &Value) -> ObjectRef {
        let s = |p: &str| object.pointer(p).and_then(Value::as_str);
        ObjectRef::new(
            s("/apiVersion").unwrap_or_default(),
            s("/kind").unwrap_or_default(),
            s("/metadata/namespace"),
            s("/metadata/name").unwrap_or_default(),
        )
    }

    fn to_value(&self) -> Value {
        let mut metadata = json!({"name": self.name});
        if let Some(ns) = &self.namespace {
            metadata["namespace"] = json!(ns);
        }
        json!({"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata})
    }

    fn same_object(&self, other: &ObjectRef) -> bool {
        // One object may be seen at two versions (`networking.istio.io/v1` vs `v1alpha3`).
        let group = |av: &str| av.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        group(&self.api_version) == group(&other.api_version)
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

/// What `uninstall` covers.
#[derive(Debug, Clone, PartialEq)]
pub struct UninstallConfig {
    /// The settings the install was rendered with (names, namespace).
    pub install: InstallConfig,
    /// Also delete the namespace (never by default: it may hold more than lazyxds).
    pub delete_namespace: bool,
}

/// Every object to delete, in order. `owned`: the objects found in the cluster with our
/// `app.kubernetes.io/managed-by: lazyxds` label (Sidecars and gateway routes).
pub fn uninstall(
    config: &UninstallConfig,
    owned: &[ObjectRef],
) -> Result<Vec<ObjectRef>, InstallError> {
    let install = render(&config.install)?;
    let refs = |c: Component| -> Vec<ObjectRef> {
        let mut v: Vec<ObjectRef> = install
            .objects
            .iter()
            .filter(|m| m.component == c)
            .map(|m| ObjectRef::of(&m.object))
            .collect();
        v.reverse();
        v
    };
    let ns = Some(config.install.namespace.as_str());
    let mut out = refs(Component::Controller);
    // Stop writing before anything else goes.
    if let Some(i) = out.iter().position(|r| r.kind == "Deployment") {
        let d = out.remove(i);
        out.insert(0, d);
    }
    let mut owned: Vec<ObjectRef> = owned.to_vec();
    owned.sort_by_key(|r| (r.kind != "Sidecar", r.clone()));
    owned.dedup();
    let mut later: Vec<ObjectRef> = Vec::new();
    // Both ways the module may have been loaded, and the module itself.
    later.push(ObjectRef::new(
        ENVOY_FILTER_API,
        "EnvoyFilter",
        ns,
        FILTER_OBJECT,
    ));
    later.push(ObjectRef::new(
        WASM_PLUGIN_API,
        "WasmPlugin",
        ns,
        FILTER_OBJECT,
    ));
    later.extend(refs(Component::Routing));
    let gateway = refs(Component::Gateway);
    later.extend(gateway);
    later.push(ObjectRef::new("v1", "ConfigMap", ns, MODULE_CONFIGMAP));
    for r in owned {
        if !later.iter().chain(&out).any(|o| o.same_object(&r)) {
            out.push(r);
        }
    }
    out.extend(later);
    if config.delete_namespace {
        out.extend(refs(Component::Namespace));
        if !out.iter().any(|r| r.kind == "Namespace") {
            out.push(ObjectRef::new(
                "v1",
                "Namespace",
                None,
                &config.install.namespace,
            ));
        }
    }
    Ok(out)
}

/// The objects of ours the controller wrote, in the order to delete them: every object
/// `owned` lists (labelled ours in the cluster) that is not one of the install's own (those
/// are whoever installed it to delete: Helm deletes the chart's after its pre-delete hook).
/// Sidecars first, then the catch-all EnvoyFilters (a Sidecar never outlives the route to
/// the gateway its hidden hosts need), then the gateway's routes.
pub fn written_by_controller(
    config: &InstallConfig,
    owned: &[ObjectRef],
) -> Result<Vec<ObjectRef>, InstallError> {
    let install: Vec<ObjectRef> = render(config)?
        .objects
        .iter()
        .map(|m| ObjectRef::of(&m.object))
        .collect();
    let mut out: Vec<ObjectRef> = owned
        .iter()
        .filter(|r| !install.iter().any(|i| i.same_object(r)))
        .cloned()
        .collect();
    out.sort_by_key(|r| (delete_rank(r), r.clone()));
    out.dedup();
    Ok(out)
}

/// Sidecars, then EnvoyFilters, then the rest.
fn delete_rank(r: &ObjectRef) -> u8 {
    match r.kind.as_str() {
        "Sidecar" => 0,
        "EnvoyFilter" => 1,
        _ => 2,
    }
}

/// What the kill switch makes the controller delete: each scoped workload's Sidecar and
/// catch-all EnvoyFilter (not the gateway's routes: they follow the mesh).
pub fn scoping(written: &[ObjectRef]) -> Vec<&ObjectRef> {
    written.iter().filter(|r| delete_rank(r) < 2).collect()
}

/// Where the pre-delete hook stands after setting the kill switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainStep {
    /// The controller is still deleting these (within the timeout): look again.
    Wait { left: String },
    /// Every Sidecar and catch-all EnvoyFilter of ours is gone.
    Drained,
    /// The timeout passed with these left (the controller is not running, or in dry-run):
    /// stop it and delete them directly, Sidecars first.
    TimedOut { left: String },
}

/// The next step, from the objects of ours still listed ([`written_by_controller`]) and how
/// long the hook has waited.
pub fn drain_step(written: &[ObjectRef], waited: Duration, timeout: Duration) -> DrainStep {
    let left = scoping(written);
    if left.is_empty() {
        DrainStep::Drained
    } else if waited >= timeout {
        DrainStep::TimedOut {
            left: describe(&left),
        }
    } else {
        DrainStep::Wait {
            left: describe(&left),
        }
    }
}

/// "2 Sidecars, 1 EnvoyFilter: shop/a, shop/b, …" (at most 5 names).
pub fn describe(objects: &[&ObjectRef]) -> String {
    let count = |kind: &str| objects.iter().filter(|r| r.kind == kind).count();
    let mut kinds: Vec<&str> = Vec::new();
    for r in objects {
        if !kinds.contains(&r.kind.as_str()) {
            kinds.push(&r.kind);
        }
    }
    let counts: Vec<String> = kinds
        .iter()
        .map(|k| {
            let n = count(k);
            format!("{n} {k}{}", if n == 1 { "" } else { "s" })
        })
        .collect();
    let mut names: Vec<String> = objects
        .iter()
        .take(5)
        .map(|r| match &r.namespace {
            Some(ns) => format!("{} {ns}/{}", r.kind, r.name),
            None => format!("{} {}", r.kind, r.name),
        })
        .collect();
    if objects.len() > 5 {
        names.push("…".into());
    }
    format!("{}: {}", counts.join(", "), names.join(", "))
}

/// [`uninstall`] as a YAML stream for `kubectl delete --ignore-not-found -f -`.
pub fn uninstall_yaml(refs: &[ObjectRef], listed_cluster: bool) -> Result<String, InstallError> {
    let mut out = format!(
        "# Generated by `lazyxds uninstall` (lazyxds {}): delete in this order with\n\
         #   kubectl delete --ignore-not-found -f -\n\
         # The controller first, then the Sidecars it wrote (workloads get the full mesh\n\
         # config back), then the routing and the gateway.\n",
        super::config::VERSION
    );
    if !listed_cluster {
        out.push_str(
            "# Without --kube the Sidecars (and routes) the controller wrote are not listed:\n\
             #   kubectl delete sidecars.networking.istio.io -A -l app.kubernetes.io/managed-by=lazyxds\n",
        );
    }
    for r in refs {
        let text = serde_norway::to_string(&r.to_value()).map_err(|e| InstallError::Render {
            what: format!("{} {}", r.kind, r.name),
            message: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}
