//! Client-side Envoys playing the sidecars of workloads: plain HTTP in on a local port,
//! out to the gateway over mTLS with the workload's SPIFFE certificate, from the
//! workload's pod address (`upstream_bind_config`), as the gateway's cluster does in a
//! scoped sidecar (the catch-all route our EnvoyFilter adds) with an `ISTIO_MUTUAL`
//! DestinationRule.

use std::net::Ipv4Addr;

use anyhow::Result;
use serde_json::{json, Value};

use crate::envoy::Envoy;
use crate::mesh::GATEWAY_HOST;
use crate::pki::{spiffe_id, Ca};
use crate::ports::free_port;

/// One workload whose sidecar talks to the gateway.
#[derive(Debug, Clone)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    /// The pod address its connections come from.
    pub source: Ipv4Addr,
}

/// One Envoy with a listener per workload; dropping it stops them.
#[derive(Debug)]
pub struct ClientSidecars {
    pub envoy: Envoy,
    /// Per workload (same order): the local port its application sends plain HTTP to.
    pub ports: Vec<u16>,
}

impl ClientSidecars {
    pub async fn start(ca: &Ca, gateway_port: u16, workloads: &[Workload]) -> Result<Self> {
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        let mut ports = Vec::new();
        for (i, w) in workloads.iter().enumerate() {
            let cert = ca.issue(&w.namespace, &w.service_account, &[])?;
            let port = free_port()?;
            ports.push(port);
            let cluster = format!("gateway-{i}");
            listeners.push(listener(i, port, &cluster));
            clusters.push(json!({
                "name": cluster,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway_port}}}}]}]},
                "upstream_bind_config": {"source_address": {"address": w.source.to_string(), "port_value": 0}},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        // What an Istio sidecar sends to an ISTIO_MUTUAL destination.
                        "sni": format!("outbound_.8080_._.{GATEWAY_HOST}"),
                        "common_tls_context": {
                            "tls_certificates": [{
                                "certificate_chain": {"filename": cert.cert.display().to_string()},
                                "private_key": {"filename": cert.key.display().to_string()},
                            }],
                            "validation_context": {
                                "trusted_ca": {"filename": ca.ca_file().display().to_string()},
                                "match_typed_subject_alt_names": [{
                                    "san_type": "URI",
                                    "matcher": {"exact": spiffe_id("lazyxds-system", "lazyxds-gateway")},
                                }],
                            },
                        },
                    },
                },
            }));
        }
        let config = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()?}}},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        });
        let envoy = Envoy::start(&serde_json::to_string_pretty(&config)?, 1).await?;
        Ok(ClientSidecars { envoy, ports })
    }
}

fn listener(i: usize, port: u16, cluster: &str) -> Value {
    json!({
        "name": format!("app-{i}"),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("app_{i}"),
                "route_config": {"name": "all", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    // The Host header is kept: the gateway routes by it.
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    })
}
