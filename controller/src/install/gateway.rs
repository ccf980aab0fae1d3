//! The lazy egress gateway: who may use it (AuthorizationPolicy), Istio gateway injection,
//! its Service, ServiceAccount, PodDisruptionBudget, HorizontalPodAutoscaler, and the module
//! ConfigMap it mounts.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ExecAction, KeyToPath, Lifecycle,
    LifecycleHandler, PodSpec, PodTemplateSpec, ResourceRequirements, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde_json::Value;

use super::config::{
    InstallConfig, Module, EGRESS_APP_PROTOCOL, EGRESS_PORT_NAME, MODULE_CONFIGMAP,
    MODULE_HASH_ANNOTATION, MODULE_KEY, MODULE_MOUNT_DIR, PART_OF, STATUS_PORT,
};
use super::controller::spread;
use super::istio::{
    AuthorizationPolicy, AuthorizationPolicySpec, AuthorizationRule, IstioObject, MatchLabels,
    RuleFrom, RuleOperation, RuleSource, RuleTo, SECURITY_API,
};
use super::{istio_metadata, metadata, sha256_hex, to_value, InstallError};

const COMPONENT: &str = "gateway";

/// The container Istio's gateway injection fills in (`image: auto`).
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// After SIGTERM, istio-agent keeps Envoy running this long (the listeners are already
/// draining, see the preStop) so in-flight requests finish and the filter's last edges,
/// flushed every 20 ms, reach the controller.
pub const TERMINATION_DRAIN: &str = "10s";

pub(super) fn objects(config: &InstallConfig) -> Result<Vec<Value>, InstallError> {
    let g = &config.gateway;
    let meta = |name: &str| metadata(config, name, true, COMPONENT);
    let sa = ServiceAccount {
        metadata: meta(&g.name),
        ..ServiceAccount::default()
    };
    let service = Service {
        // Every lazy Sidecar sends to it: exported everywhere, whatever the mesh's
        // `defaultServiceExportTo` says.
        metadata: ObjectMeta {
            annotations: Some(BTreeMap::from([(
                lazyxds_index::objects::ANNOTATION_EXPORT_TO.to_string(),
                "*".to_string(),
            )])),
            ..meta(&g.name)
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(config.gateway_selector()),
            ports: Some(vec![
                ServicePort {
                    name: Some("status-port".into()),
                    port: i32::from(STATUS_PORT),
                    target_port: Some(IntOrString::Int(i32::from(STATUS_PORT))),
                    protocol: Some("TCP".into()),
                    // Envoy's health endpoint is HTTP; without a protocol `istioctl
                    // validate` refuses a port name that is not `<protocol>[-suffix]`.
                    app_protocol: Some("http".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some(EGRESS_PORT_NAME.into()),
                    app_protocol: Some(EGRESS_APP_PROTOCOL.into()),
                    port: i32::from(g.egress_proxy_port),
                    // The Gateway server's port is the listener's: same number.
                    target_port: Some(IntOrString::Int(i32::from(g.egress_proxy_port))),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let selector = LabelSelector {
        match_labels: Some(config.gateway_selector()),
        ..LabelSelector::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(&g.name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector.clone()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    let hpa = HorizontalPodAutoscaler {
        metadata: meta(&g.name),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: g.name.clone(),
            },
            min_replicas: Some(g.min_replicas),
            max_replicas: g.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(g.target_cpu_percent),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            // Up at once (first calls queue behind a busy gateway); down slowly.
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(300),
                    policies: Some(vec![HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: 1,
                        period_seconds: 60,
                    }]),
                    ..HPAScalingRules::default()
                }),
                ..HorizontalPodAutoscalerBehavior::default()
            }),
        },
        ..HorizontalPodAutoscaler::default()
    };
    Ok(vec![
        // Before the pods: the gateway never serves without it.
        to_value("AuthorizationPolicy", &authorization_policy(config))?,
        to_value("ServiceAccount", &sa)?,
        to_value("Service", &service)?,
        to_value("Deployment", &deployment(config))?,
        to_value("PodDisruptionBudget", &pdb)?,
        to_value("HorizontalPodAutoscaler", &hpa)?,
    ])
}

/// The gateway pods' labels: the selector, plus what Istio injection and telemetry read.
pub fn pod_labels(config: &InstallConfig) -> BTreeMap<String, String> {
    let mut labels = config.gateway_selector();
    labels.insert("app".into(), config.gateway.name.clone());
    labels.insert(PART_OF.0.into(), PART_OF.1.into());
    match &config.gateway.revision {
        Some(rev) => labels.insert("istio.io/rev".into(), rev.clone()),
        None => labels.insert("sidecar.istio.io/inject".into(), "true".into()),
    };
    labels
}

/// The gateway's ProxyConfig (`proxy.istio.io/config`; Istio's injector and pilot-agent
/// apply it over the mesh's `defaultConfig`):
/// - `concurrency`: Envoy worker threads (unset, one per core of the node); each holds one
///   stream to the controller, whose stream cap the install sizes from it;
/// - `terminationDrainDuration`: see [`TERMINATION_DRAIN`];
/// - `gatewayTopology.numTrustedProxies: 0`, whatever the mesh's default: the gateway's
///   HTTP connection manager then trusts no `X-Forwarded-For` hop
///   (`xff_num_trusted_hops`, istiod's `buildGatewayConnectionManager`), so the source
///   address the filter reports, and the AuthorizationPolicy sees, is the caller's own
///   connection, never a header a caller wrote.
pub fn proxy_config(concurrency: u32) -> Value {
    serde_json::json!({
        "concurrency": concurrency,
        "gatewayTopology": {"numTrustedProxies": 0},
        "terminationDrainDuration": TERMINATION_DRAIN,
    })
}

/// Who may use the gateway: an ALLOW policy on its pods for the egress port, with any
/// authenticated mesh identity (`principals: ["*"]` needs a verified peer certificate).
/// Every other request to that port is refused with 403 by the gateway's RBAC filter.
/// The Gateway's `ISTIO_MUTUAL` server already demands a mesh certificate; this makes the
/// rule explicit and keeps it if the server's TLS ever changes.
fn authorization_policy(config: &InstallConfig) -> AuthorizationPolicy {
    IstioObject {
        api_version: SECURITY_API.into(),
        kind: "AuthorizationPolicy".into(),
        metadata: istio_metadata(config, &config.gateway.name, COMPONENT),
        spec: AuthorizationPolicySpec {
            selector: MatchLabels {
                match_labels: config.gateway_selector(),
            },
            action: "ALLOW".into(),
            rules: vec![AuthorizationRule {
                from: vec![RuleFrom {
                    source: RuleSource {
                        principals: vec!["*".into()],
                    },
                }],
                to: vec![RuleTo {
                    operation: RuleOperation {
                        ports: vec![config.gateway.egress_proxy_port.to_string()],
                    },
                }],
            }],
        },
    }
}

fn deployment(config: &InstallConfig) -> Deployment {
    let g = &config.gateway;
    let mut annotations = BTreeMap::from([
        // Istio replaces `image: auto` and adds the proxy's settings.
        (
            "inject.istio.io/templates".to_string(),
            "gateway".to_string(),
        ),
        (
            "proxy.istio.io/config".to_string(),
            proxy_config(g.concurrency).to_string(),
        ),
    ]);
    let mut volumes = None;
    let mut mounts = None;
    if let Module::ConfigMap(module) = &config.module {
        if let Some(wasm) = module {
            // A new module is a new pod template: the gateway rolls.
            annotations.insert(MODULE_HASH_ANNOTATION.into(), sha256_hex(wasm));
        }
        volumes = Some(vec![Volume {
            name: "lazyxds-filter".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: MODULE_CONFIGMAP.into(),
                items: Some(vec![KeyToPath {
                    key: MODULE_KEY.into(),
                    path: MODULE_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]);
        mounts = Some(vec![VolumeMount {
            name: "lazyxds-filter".into(),
            mount_path: MODULE_MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]);
    }
    let proxy = Container {
        name: PROXY_CONTAINER.into(),
        image: Some("auto".into()),
        // Stop taking new connections (clients move to other replicas) while in-flight
        // requests finish; istio-agent then waits `terminationDrainDuration` before it
        // stops Envoy, far longer than the filter's flush interval.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "pilot-agent".into(),
                        "request".into(),
                        "POST".into(),
                        "drain_listeners?graceful".into(),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("200m".into())),
                ("memory".to_string(), Quantity("256Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("2Gi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        volume_mounts: mounts,
        ..Container::default()
    };
    Deployment {
        metadata: metadata(config, &g.name, true, COMPONENT),
        spec: DeploymentSpec {
            // No `replicas`: the HorizontalPodAutoscaler owns it (an apply would reset it).
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(config.gateway_selector()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(config)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(g.name.clone()),
                    termination_grace_period_seconds: Some(30),
                    topology_spread_constraints: Some(vec![spread(config.gateway_selector())]),
                    containers: vec![proxy],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The module, as a ConfigMap the gateway mounts.
pub(super) fn module_configmap(config: &InstallConfig, wasm: &[u8]) -> Result<Value, InstallError> {
    let mut meta = metadata(config, MODULE_CONFIGMAP, true, COMPONENT);
    meta.annotations = Some(BTreeMap::from([(
        MODULE_HASH_ANNOTATION.to_string(),
        sha256_hex(wasm),
    )]));
    let cm = ConfigMap {
        metadata: meta,
        binary_data: Some(BTreeMap::from([(
            MODULE_KEY.to_string(),
            ByteString(wasm.to_vec()),
        )])),
        ..ConfigMap::default()
    };
    to_value("ConfigMap", &cm)
}
