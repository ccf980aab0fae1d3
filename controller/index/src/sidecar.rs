//! The Istio `Sidecar` resource as we write it: typed, serializing to exactly what
//! `networking.istio.io/v1` accepts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::objects::Labels;

pub const API_VERSION: &str = "networking.istio.io/v1";
pub const KIND: &str = "Sidecar";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: SidecarSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Fields we copy from a namespace default without interpreting them (`ingress`,
    /// `inboundConnectionPool`, ...), keyed by their Istio (camelCase) name.
    #[serde(flatten)]
    pub copied: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSelector {
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressListener {
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<EgressProxy>,
}

/// `outboundTrafficPolicy.mode` (a Sidecar never has `ALLOW_ANY_DYNAMIC_DNS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundPolicy {
    #[default]
    AllowAny,
    RegistryOnly,
}

impl OutboundPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::AllowAny => "ALLOW_ANY",
            OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ALLOW_ANY" => Some(OutboundPolicy::AllowAny),
            "REGISTRY_ONLY" => Some(OutboundPolicy::RegistryOnly),
            _ => None,
        }
    }
}

/// `egressProxy`: Istio's `Destination`; `port` is required by validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressProxy {
    pub host: String,
    pub port: PortSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSelector {
    pub number: u32,
}

impl Sidecar {
    /// The YAML `kubectl apply` and `istioctl analyze` take.
    pub fn to_yaml(&self) -> Result<String, Error> {
        serde_norway::to_string(self).map_err(|e| Error::Serialize {
            what: format!("Sidecar {}/{}", self.metadata.namespace, self.metadata.name),
            message: e.to_string(),
        })
    }

    /// The JSON body of a server-side apply.
    pub fn to_json(&self) -> Result<serde_json::Value, Error> {
        serde_json::to_value(self).map_err(|e| Error::Serialize {
            what: format!("Sidecar {}/{}", self.metadata.namespace, self.metadata.name),
            message: e.to_string(),
        })
    }
}
