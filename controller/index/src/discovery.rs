//! Istio's mesh config, the parts lazyxds honours: `discoverySelectors` (namespaces istiod
//! ignores get no Sidecar from us either), the mesh-wide `outboundTrafficPolicy`, the
//! default `exportTo` of Services, ServiceEntries and VirtualServices, and the root
//! namespace (whose AuthorizationPolicies apply mesh-wide).

use serde::Deserialize;

use crate::error::Error;
use crate::istio::OutboundPolicy;
use crate::objects::Labels;
use crate::topology::limits::{too_deep, MAX_DEPTH};

/// A Kubernetes label selector (`matchLabels` AND every `matchExpressions` entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.is_subset_of(labels)
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                let listed = |v: &str| r.values.iter().any(|listed| listed == v);
                match r.operator {
                    Operator::In => value.is_some_and(listed),
                    Operator::NotIn => value.is_none_or(|v| !listed(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// The namespaces istiod watches: all when `selectors` is empty, else those matching any.
pub fn discovered(selectors: &[LabelSelector], namespace_labels: &Labels) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| s.matches(namespace_labels))
}

/// What lazyxds reads from the mesh config (`istio-system/istio` ConfigMap, key `mesh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub discovery_selectors: Vec<LabelSelector>,
    /// `None`: not set (Istio's default, ALLOW_ANY).
    pub outbound_policy: Option<OutboundPolicy>,
    /// `defaultServiceExportTo`: the exportTo of Services and ServiceEntries that set
    /// none (empty: not set, Istio's `*`).
    pub default_service_export_to: Vec<String>,
    /// `defaultVirtualServiceExportTo`, likewise for VirtualServices.
    pub default_virtual_service_export_to: Vec<String>,
    /// `rootNamespace`; `None`: not set (Istio's default, `istio-system`).
    pub root_namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMesh {
    #[serde(default)]
    discovery_selectors: Vec<LabelSelector>,
    #[serde(default)]
    outbound_traffic_policy: Option<RawPolicy>,
    #[serde(default)]
    default_service_export_to: Vec<String>,
    #[serde(default)]
    default_virtual_service_export_to: Vec<String>,
    #[serde(default)]
    root_namespace: Option<String>,
}

#[derive(Deserialize)]
struct RawPolicy {
    #[serde(default)]
    mode: Option<String>,
}

impl MeshConfig {
    /// Parses the `mesh` YAML; fields lazyxds does not use are ignored (it is Istio's).
    pub fn parse(yaml: &str) -> Result<MeshConfig, Error> {
        let yaml_error = |message: String| Error::Yaml {
            file: "istio-system/istio ConfigMap, key mesh".into(),
            message,
        };
        // The same guard as topology files: deep nesting costs the parser its square.
        if let Some((line, column)) = too_deep(yaml, MAX_DEPTH) {
            return Err(yaml_error(format!(
                "line {line}, column {column}: nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let raw: Option<RawMesh> =
            serde_norway::from_str(yaml).map_err(|e| yaml_error(e.to_string()))?;
        let Some(raw) = raw else {
            return Ok(MeshConfig::default());
        };
        let outbound_policy = match raw.outbound_traffic_policy.and_then(|p| p.mode).as_deref() {
            None => None,
            Some("ALLOW_ANY") => Some(OutboundPolicy::AllowAny),
            Some("REGISTRY_ONLY") => Some(OutboundPolicy::RegistryOnly),
            Some(other) => {
                return Err(yaml_error(format!(
                    "outboundTrafficPolicy.mode: {other:?} is not ALLOW_ANY or REGISTRY_ONLY"
                )))
            }
        };
        Ok(MeshConfig {
            discovery_selectors: raw.discovery_selectors,
            outbound_policy,
            default_service_export_to: raw.default_service_export_to,
            default_virtual_service_export_to: raw.default_virtual_service_export_to,
            root_namespace: raw.root_namespace.filter(|ns| !ns.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let yaml = concat!(
            "discoverySelectors:\n",
            "- matchLabels: {istio-discovery: enabled}\n",
            "- matchExpressions: [{key: env, operator: In, values: [prod, staging]},",
            " {key: legacy, operator: DoesNotExist}]\n",
        );
        let mesh = MeshConfig::parse(yaml).unwrap();
        assert_eq!(mesh.discovery_selectors.len(), 2);
        let cases = [
            (labels(&[("istio-discovery", "enabled")]), true),
            (labels(&[("env", "prod")]), true),
            (labels(&[("env", "prod"), ("legacy", "yes")]), false),
            (labels(&[("env", "dev")]), false),
            (labels(&[]), false),
        ];
        for (ns_labels, want) in cases {
            assert_eq!(
                discovered(&mesh.discovery_selectors, &ns_labels),
                want,
                "{ns_labels:?}"
            );
        }
        assert!(
            discovered(&[], &labels(&[])),
            "no selectors: every namespace"
        );
        let not_in = LabelSelector {
            match_expressions: vec![Requirement {
                key: "team".into(),
                operator: Operator::NotIn,
                values: vec!["a".into()],
            }],
            ..LabelSelector::default()
        };
        assert!(not_in.matches(&labels(&[])) && !not_in.matches(&labels(&[("team", "a")])));
    }

    #[test]
    fn mesh_policy_and_errors() {
        let cases = [
            ("", Ok(None)),
            ("accessLogFile: /dev/stdout\n", Ok(None)),
            (
                "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
                Ok(Some(OutboundPolicy::RegistryOnly)),
            ),
            (
                "outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
                Ok(Some(OutboundPolicy::AllowAny)),
            ),
            (
                "outboundTrafficPolicy: {mode: SOMETIMES}\n",
                Err("SOMETIMES"),
            ),
            ("discoverySelectors: {oops: 1}\n", Err("discoverySelectors")),
        ];
        for (yaml, want) in cases {
            match (MeshConfig::parse(yaml), want) {
                (Ok(m), Ok(policy)) => assert_eq!(m.outbound_policy, policy, "{yaml}"),
                (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{yaml}: {e}"),
                (got, want) => panic!("{yaml}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn export_defaults_and_the_root_namespace() {
        let mesh = MeshConfig::parse(concat!(
            "rootNamespace: mesh-root\n",
            "defaultServiceExportTo: [\".\"]\n",
            "defaultVirtualServiceExportTo: [\".\", istio-system]\n",
            "defaultDestinationRuleExportTo: [\"~\"]\n",
        ))
        .unwrap();
        assert_eq!(mesh.root_namespace.as_deref(), Some("mesh-root"));
        assert_eq!(mesh.default_service_export_to, vec!["."]);
        assert_eq!(
            mesh.default_virtual_service_export_to,
            vec![".", "istio-system"]
        );
        let unset = MeshConfig::parse("rootNamespace: \"\"\n").unwrap();
        assert_eq!(unset.root_namespace, None);
        assert!(unset.default_service_export_to.is_empty());
        assert!(MeshConfig::parse("defaultServiceExportTo: .\n").is_err());
    }
}
