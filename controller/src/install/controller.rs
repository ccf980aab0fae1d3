//! The controller: ServiceAccount, kill-switch ConfigMap, RBAC and the admission policy
//! narrowing it ([`super::admission`]), Deployment, Services, PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::config::{InstallConfig, CONTROLLER_NAME, GRPC_PORT_NAME, HTTP_PORT_NAME};
use super::rbac::{Rule, CLUSTER_RULES, MESH_CONFIG_NAMESPACE, MESH_CONFIG_RULES, NAMESPACE_RULES};
use super::{metadata, to_value, InstallError};
use lazyxds_index::objects::{KILL_SWITCH_CONFIGMAP, LEADER_LABEL};

/// The Service gateways stream edges to selects only the leader's pod.
pub const GRPC_SERVICE: &str = CONTROLLER_NAME;
/// The Role (and RoleBinding) reading Istio's mesh config in Istio's root namespace.
pub const MESH_CONFIG_ROLE: &str = "lazyxds-mesh-config";

/// The Service selecting every replica (health, metrics, debug).
pub const MONITOR_SERVICE: &str = "lazyxds-monitor";

/// The unprivileged user of the controller image (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

const COMPONENT: &str = "controller";

pub(super) fn objects(config: &InstallConfig) -> Result<Vec<Value>, InstallError> {
    let meta = |name: &str, namespaced: bool| metadata(config, name, namespaced, COMPONENT);
    let sa = ServiceAccount {
        metadata: meta(CONTROLLER_NAME, true),
        ..ServiceAccount::default()
    };
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: CONTROLLER_NAME.into(),
        namespace: Some(config.namespace.clone()),
        ..Subject::default()
    };
    let cluster_role = ClusterRole {
        metadata: meta(CONTROLLER_NAME, false),
        rules: Some(policy_rules(CLUSTER_RULES)),
        ..ClusterRole::default()
    };
    let cluster_binding = ClusterRoleBinding {
        metadata: meta(CONTROLLER_NAME, false),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: CONTROLLER_NAME.into(),
        },
        subjects: Some(vec![subject.clone()]),
    };
    let role = Role {
        metadata: meta(CONTROLLER_NAME, true),
        rules: Some(policy_rules(NAMESPACE_RULES)),
    };
    let role_binding = RoleBinding {
        metadata: meta(CONTROLLER_NAME, true),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: CONTROLLER_NAME.into(),
        },
        subjects: Some(vec![subject]),
    };
    let mut in_istio_ns = meta(MESH_CONFIG_ROLE, true);
    in_istio_ns.namespace = Some(MESH_CONFIG_NAMESPACE.into());
    let mesh_role = Role {
        metadata: in_istio_ns.clone(),
        rules: Some(policy_rules(MESH_CONFIG_RULES)),
    };
    let mesh_binding = RoleBinding {
        metadata: in_istio_ns,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: MESH_CONFIG_ROLE.into(),
        },
        subjects: role_binding.subjects.clone(),
    };
    let mut leader_selector = config.controller_selector();
    leader_selector.insert(LEADER_LABEL.into(), "true".into());
    let grpc_service = Service {
        metadata: meta(GRPC_SERVICE, true),
        spec: Some(ServiceSpec {
            // Gateways stream to the leader only: it is the one that writes.
            selector: Some(leader_selector),
            ports: Some(vec![ServicePort {
                name: Some(GRPC_PORT_NAME.into()),
                port: i32::from(config.controller.grpc_port),
                target_port: Some(IntOrString::String(GRPC_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("grpc".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let monitor_service = Service {
        metadata: meta(MONITOR_SERVICE, true),
        spec: Some(ServiceSpec {
            selector: Some(config.controller_selector()),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: i32::from(config.controller.http_port),
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(CONTROLLER_NAME, true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(config.controller_selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    // The kill switch, shipped on: `enabled: "false"` deletes every Sidecar we own.
    let kill_switch = ConfigMap {
        metadata: meta(KILL_SWITCH_CONFIGMAP, true),
        data: Some(BTreeMap::from([(
            "enabled".to_string(),
            "true".to_string(),
        )])),
        ..ConfigMap::default()
    };
    let mut out = vec![
        to_value("ServiceAccount", &sa)?,
        to_value("ConfigMap", &kill_switch)?,
        to_value("ClusterRole", &cluster_role)?,
        to_value("ClusterRoleBinding", &cluster_binding)?,
        to_value("Role", &role)?,
        to_value("RoleBinding", &role_binding)?,
        to_value("Role", &mesh_role)?,
        to_value("RoleBinding", &mesh_binding)?,
    ];
    // Before the Deployment: the controller never writes without it.
    if config.admission_policy {
        out.extend(super::admission::objects(config)?);
    }
    out.extend([
        to_value("Service", &grpc_service)?,
        to_value("Service", &monitor_service)?,
        to_value("Deployment", &deployment(config))?,
        to_value("PodDisruptionBudget", &pdb)?,
    ]);
    Ok(out)
}

fn policy_rules(rules: &[Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.group.to_string()]),
            resources: Some(r.resources.iter().map(|s| s.to_string()).collect()),
            verbs: r.verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: (!r.names.is_empty())
                .then(|| r.names.iter().map(|s| s.to_string()).collect()),
            ..PolicyRule::default()
        })
        .collect()
}

/// The controller's stream cap, from the gateway's size: one stream per Envoy worker of
/// each replica the autoscaler may run, ×4: a replaced stream lingers until keepalive
/// finds it dead (≤ 40 s) while its worker reconnects, and a rollout surges replicas.
/// At least 64. Connections get the same cap (outside a mesh each worker has its own;
/// behind the controller's sidecar they are fewer).
pub fn gateway_streams(config: &InstallConfig) -> u32 {
    let g = &config.gateway;
    let replicas = u32::try_from(g.max_replicas).unwrap_or(0);
    replicas
        .saturating_mul(g.concurrency)
        .saturating_mul(4)
        .max(64)
}

/// The controller's environment: every `lazyxds run` setting the install decides, as
/// `LAZYXDS_*` variables (flags would collide with a user's `--controller-env`), and the
/// pod's identity for leader election.
pub fn controller_env(config: &InstallConfig) -> Vec<EnvVar> {
    let c = &config.controller;
    let mut settings: BTreeMap<String, String> = BTreeMap::from([
        (
            "LAZYXDS_GRPC_ADDR".into(),
            format!("0.0.0.0:{}", c.grpc_port),
        ),
        (
            "LAZYXDS_HTTP_ADDR".into(),
            format!("0.0.0.0:{}", c.http_port),
        ),
        ("LAZYXDS_GATEWAY_HOST".into(), config.gateway_host()),
        ("LAZYXDS_GATEWAY_NAMESPACE".into(), config.namespace.clone()),
        (
            "LAZYXDS_EGRESS_PROXY_PORT".into(),
            config.gateway.egress_proxy_port.to_string(),
        ),
        ("LAZYXDS_LOG_LEVEL".into(), c.log_level.clone()),
        // The gateway admits only mTLS callers (its AuthorizationPolicy): an edge without
        // the caller's identity did not come from a request it served.
        ("LAZYXDS_REQUIRE_PRINCIPAL".into(), "true".into()),
    ]);
    if c.dry_run {
        settings.insert("LAZYXDS_DRY_RUN".into(), "true".into());
    }
    // Like the filter's configuration: only when not the default.
    if config.cluster_domain != lazyxds_index::host::DEFAULT_CLUSTER_DOMAIN {
        settings.insert(
            "LAZYXDS_CLUSTER_DOMAIN".into(),
            config.cluster_domain.clone(),
        );
    }
    // One writer, and gateways stream to it: the gRPC Service selects the leader's label,
    // so even a single replica must elect itself to get it.
    settings.insert("LAZYXDS_LEADER_ELECTION".into(), "true".into());
    let streams = gateway_streams(config).to_string();
    settings.insert("LAZYXDS_MAX_STREAMS".into(), streams.clone());
    settings.insert("LAZYXDS_MAX_CONNECTIONS".into(), streams);
    settings.extend(c.env.clone());
    let mut env: Vec<EnvVar> = settings
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            ..EnvVar::default()
        })
        .collect();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        env.push(EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    env
}

fn deployment(config: &InstallConfig) -> Deployment {
    let c = &config.controller;
    let mut labels = config.controller_selector();
    labels.insert("app".into(), CONTROLLER_NAME.into());
    labels.insert(
        super::config::PART_OF.0.into(),
        super::config::PART_OF.1.into(),
    );
    labels.insert(
        "sidecar.istio.io/inject".into(),
        if c.in_mesh { "true" } else { "false" }.into(),
    );
    if let (true, Some(rev)) = (c.in_mesh, &config.gateway.revision) {
        labels.insert("istio.io/rev".into(), rev.clone());
    }
    let mut annotations = BTreeMap::new();
    if c.in_mesh {
        // The controller talks to the API server at once; its sidecar must be up first.
        annotations.insert(
            "proxy.istio.io/config".to_string(),
            r#"{"holdApplicationUntilProxyStarts":true}"#.to_string(),
        );
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let container = Container {
        name: CONTROLLER_NAME.into(),
        image: Some(c.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["run".into(), "--kube".into()]),
        env: Some(controller_env(config)),
        ports: Some(vec![
            ContainerPort {
                name: Some(GRPC_PORT_NAME.into()),
                container_port: i32::from(c.grpc_port),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(HTTP_PORT_NAME.into()),
                container_port: i32::from(c.http_port),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("128Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("1Gi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Deployment {
        metadata: metadata(config, CONTROLLER_NAME, true, COMPONENT),
        spec: DeploymentSpec {
            replicas: Some(c.replicas),
            selector: LabelSelector {
                match_labels: Some(config.controller_selector()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROLLER_NAME.into()),
                    // More than the controller's own 10 s shutdown grace.
                    termination_grace_period_seconds: Some(15),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    topology_spread_constraints: Some(vec![spread(config.controller_selector())]),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// Replicas on different nodes where possible.
pub(super) fn spread(selector: BTreeMap<String, String>) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 7: the controller's caps follow the gateway's size (one stream per
    /// Envoy worker of each replica, ×4), never below 64.
    #[test]
    fn the_controller_stream_cap_follows_the_gateway() {
        for (max_replicas, concurrency, want) in [(10, 2, "80"), (2, 1, "64"), (50, 4, "800")] {
            let mut config = InstallConfig::default();
            config.gateway.max_replicas = max_replicas;
            config.gateway.concurrency = concurrency;
            let env: BTreeMap<String, Option<String>> = controller_env(&config)
                .into_iter()
                .map(|e| (e.name, e.value))
                .collect();
            for name in ["LAZYXDS_MAX_STREAMS", "LAZYXDS_MAX_CONNECTIONS"] {
                assert_eq!(
                    env[name].as_deref(),
                    Some(want),
                    "{name} for {max_replicas} × {concurrency}"
                );
            }
        }
    }
}
