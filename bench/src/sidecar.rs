//! P6: an Istio-like sidecar bootstrap for a mesh of N services, full or scoped.
//!
//! Per service port, as istiod renders it for a sidecar: an `outbound|port||host` cluster
//! (endpoints inline instead of EDS, 3 pods) with Istio's circuit breakers, metadata,
//! protocol options and an auto-mTLS `UpstreamTlsContext` (SDS secrets by name, here
//! static); HTTP ports get a virtual host in the port's route table with Istio's domains,
//! retry policy and decorator; TCP ports get a listener of their own (`bind_to_port:
//! false`, like istiod's). Stats are filtered by an Istio-like inclusion list.
//!
//! Nothing here ever connects: every address is on loopback and no traffic is sent; P6
//! only loads the configuration and reads memory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// One port of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub namespace: String,
    pub port: u16,
    pub http: bool,
    pub endpoints: usize,
}

impl ServicePort {
    fn new(name: &str, namespace: &str, port: u16, http: bool, endpoints: usize) -> Self {
        ServicePort {
            name: name.into(),
            namespace: namespace.into(),
            port,
            http,
            endpoints,
        }
    }

    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    pub fn cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.host())
    }
}

/// HTTP ports of the mesh's application services (round-robin).
pub const MESH_HTTP_PORTS: [u16; 4] = [8080, 9080, 80, 5000];
/// Endpoints (pods) per mesh service.
pub const ENDPOINTS_PER_SERVICE: usize = 3;
/// Dependencies of the scoped sidecar (a service rarely calls more than ~10 others).
pub const SCOPED_DEPS: usize = 10;

/// Application service `i` of the mesh (10 services per namespace).
pub fn mesh_service(i: usize) -> ServicePort {
    ServicePort::new(
        &format!("svc-{i}"),
        &format!("ns-{}", i / 10),
        MESH_HTTP_PORTS[i % MESH_HTTP_PORTS.len()],
        true,
        ENDPOINTS_PER_SERVICE,
    )
}

/// What a lazy Sidecar always keeps: `istio-system/*` (istiod, the ingress gateway, the
/// lazyxds gateway, the placeholder service carrying every HTTP port of the mesh) and a
/// few TCP-only services (they cannot be reached through the gateway by Host).
pub fn always_kept() -> Vec<ServicePort> {
    let mut v = vec![
        ServicePort::new("istiod", "istio-system", 15010, false, 1),
        ServicePort::new("istiod", "istio-system", 15012, false, 1),
        ServicePort::new("istiod", "istio-system", 443, false, 1),
        ServicePort::new("istiod", "istio-system", 15014, true, 1),
        ServicePort::new("istio-ingressgateway", "istio-system", 80, true, 2),
        ServicePort::new("istio-ingressgateway", "istio-system", 443, false, 2),
        ServicePort::new("istio-ingressgateway", "istio-system", 15021, true, 2),
        ServicePort::new("lazyxds-gateway", "istio-system", 8080, true, 2),
    ];
    for port in MESH_HTTP_PORTS {
        v.push(ServicePort::new(
            "lazyxds-placeholder",
            "istio-system",
            port,
            true,
            0,
        ));
    }
    v.push(ServicePort::new("mysql", "data", 3306, false, 1));
    v.push(ServicePort::new("redis", "data", 6379, false, 1));
    v.push(ServicePort::new("kafka", "data", 9092, false, 3));
    v
}

/// The full sidecar of a mesh of `n` services: every service plus what is always kept.
pub fn full(n: usize) -> Vec<ServicePort> {
    let mut v: Vec<ServicePort> = (0..n).map(mesh_service).collect();
    v.extend(always_kept());
    v
}

/// The lazy sidecar: its `SCOPED_DEPS` dependencies plus what is always kept.
pub fn scoped() -> Vec<ServicePort> {
    full(SCOPED_DEPS)
}

/// A stable fake address on loopback for (service, k): pods and "cluster IPs" alike.
fn addr(seed: usize, k: usize) -> Ipv4Addr {
    let x = seed * 8 + k;
    Ipv4Addr::new(127, 100 + ((x >> 16) & 0x7f) as u8, (x >> 8) as u8, x as u8)
}

fn tls_transport_socket(sp: &ServicePort) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificate_sds_secret_configs": [{"name": "default"}],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{
                            "san_type": "URI",
                            "matcher": {"exact": format!("spiffe://cluster.local/ns/{}/sa/{}", sp.namespace, sp.name)}
                        }]
                    },
                    "validation_context_sds_secret_config": {"name": "ROOTCA"}
                }
            },
            "sni": format!("outbound_.{}_._.{}", sp.port, sp.host())
        }
    })
}

fn cluster(sp: &ServicePort, seed: usize) -> Value {
    let name = sp.cluster();
    let endpoints: Vec<Value> = (0..sp.endpoints)
        .map(|k| {
            json!({
                "endpoint": {"address": {"socket_address": {"address": addr(seed, k + 1).to_string(), "port_value": sp.port}}},
                "metadata": {"filter_metadata": {
                    "envoy.transport_socket_match": {"tlsMode": "istio"},
                    "istio": {"workload": format!("{}-v1;{};{};v1;Kubernetes", sp.name, sp.namespace, sp.name)}
                }},
                "load_balancing_weight": 1
            })
        })
        .collect();
    let max = 4_294_967_295u64;
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{
            "max_connections": max, "max_pending_requests": max, "max_requests": max,
            "max_retries": max, "track_remaining": true
        }]},
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "metadata": {"filter_metadata": {"istio": {
            "services": [{"host": sp.host(), "name": sp.name, "namespace": sp.namespace}],
            "default_original_port": sp.port
        }}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "3600s"},
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}
            }
        },
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": tls_transport_socket(sp)},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}
            }}
        ],
        "load_assignment": {"cluster_name": name, "endpoints": [{
            "locality": {"region": "region-1", "zone": "zone-a"},
            "lb_endpoints": endpoints
        }]}
    })
}

fn vhost(sp: &ServicePort, seed: usize) -> Value {
    let host = sp.host();
    let short = format!("{}.{}", sp.name, sp.namespace);
    let svc = format!("{short}.svc");
    let vip = addr(seed, 0).to_string();
    let p = sp.port;
    json!({
        "name": format!("{host}:{p}"),
        "domains": [host.clone(), format!("{host}:{p}"), short.clone(), format!("{short}:{p}"),
                    svc.clone(), format!("{svc}:{p}"), vip.clone(), format!("{vip}:{p}")],
        "routes": [{
            "name": "default",
            "match": {"prefix": "/"},
            "route": {
                "cluster": sp.cluster(),
                "timeout": "0s",
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                    "num_retries": 2,
                    "retry_host_predicate": [{
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
                    }],
                    "host_selection_retry_max_attempts": "5",
                    "retriable_status_codes": [503]
                },
                "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}
            },
            "decorator": {"operation": format!("{host}:{p}/*")}
        }],
        "include_request_attempt_count": true
    })
}

fn hcm(stat_prefix: &str, route_config: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": route_config,
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
            }],
            "use_remote_address": false,
            "normalize_path": true,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED"
        }
    })
}

fn secrets(cert_pem: &str, key_pem: &str) -> Value {
    json!([
        {"name": "default", "tls_certificate": {
            "certificate_chain": {"inline_string": cert_pem},
            "private_key": {"inline_string": key_pem}
        }},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": cert_pem}}}
    ])
}

/// Istio-like stats inclusion: only proxy-wide stats, none per outbound cluster.
fn stats_config() -> Value {
    let prefixes = [
        "reporter=",
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
        "component",
    ];
    let suffixes = [
        "rbac.allowed",
        "rbac.denied",
        "shadow_allowed",
        "shadow_denied",
    ];
    let mut patterns: Vec<Value> = prefixes.iter().map(|p| json!({"prefix": p})).collect();
    patterns.extend(suffixes.iter().map(|s| json!({"suffix": s})));
    json!({"stats_matcher": {"inclusion_list": {"patterns": patterns}}})
}

/// The bootstrap of a sidecar that sees `services`. `port` is the one listener that binds
/// (the virtual outbound one, 127.0.0.1:port); the others are `bind_to_port: false`.
pub fn bootstrap(services: &[ServicePort], port: u16, cert_pem: &str, key_pem: &str) -> Value {
    let mut clusters = Vec::new();
    let mut by_port: BTreeMap<u16, Vec<Value>> = BTreeMap::new();
    let mut listeners = Vec::new();
    for (seed, sp) in services.iter().enumerate() {
        clusters.push(cluster(sp, seed + 1));
        if sp.http {
            by_port
                .entry(sp.port)
                .or_default()
                .push(vhost(sp, seed + 1));
        } else {
            let vip = addr(seed + 1, 0);
            listeners.push(json!({
                "name": format!("{vip}_{}", sp.port),
                "address": {"socket_address": {"address": vip.to_string(), "port_value": sp.port}},
                "bind_to_port": false,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": sp.cluster(),
                        "cluster": sp.cluster()
                    }
                }]}]
            }));
        }
    }
    let gateway = ServicePort::new("lazyxds-gateway", "istio-system", 8080, true, 0).cluster();
    for (p, mut vhosts) in by_port {
        // Unknown hosts go to the lazy gateway (the catch-all route our EnvoyFilter sets).
        vhosts.push(json!({
            "name": "allow_any",
            "domains": ["*"],
            "routes": [{"name": "allow_any", "match": {"prefix": "/"},
                        "route": {"cluster": gateway, "timeout": "0s"}}],
            "include_request_attempt_count": true
        }));
        listeners.push(json!({
            "name": format!("0.0.0.0_{p}"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": p}},
            "bind_to_port": false,
            "filter_chains": [{"filters": [hcm(&format!("outbound_0.0.0.0_{p}"),
                json!({"name": p.to_string(), "virtual_hosts": vhosts, "validate_clusters": false}))]}]
        }));
    }
    listeners.push(json!({
        "name": "virtualOutbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "BlackHoleCluster",
                "cluster": "BlackHoleCluster"
            }
        }]}]
    }));
    clusters.push(json!({
        "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s",
        "load_assignment": {"cluster_name": "BlackHoleCluster"}
    }));
    json!({
        "node": {"id": "sidecar~127.0.0.2~bench.ns-0~ns-0.svc.cluster.local", "cluster": "bench.ns-0"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": stats_config(),
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
            "secrets": secrets(cert_pem, key_pem)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_is_ten_deps_plus_what_is_always_kept() {
        let kept = always_kept().len();
        assert_eq!(scoped().len(), SCOPED_DEPS + kept);
        assert_eq!(full(2000).len(), 2000 + kept);
        assert_eq!(&full(2000)[..SCOPED_DEPS], &scoped()[..SCOPED_DEPS]);
    }

    #[test]
    fn bootstrap_has_a_cluster_per_service_port_and_vhosts_or_listeners() {
        let services = full(8);
        let b = bootstrap(&services, 1234, "CERT", "KEY");
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), services.len() + 1);
        let c = &clusters[0];
        assert_eq!(c["name"], "outbound|8080||svc-0.ns-0.svc.cluster.local");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let tls = &c["transport_socket_matches"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "outbound_.8080_._.svc-0.ns-0.svc.cluster.local");
        let tcp = services.iter().filter(|s| !s.http).count();
        let http_ports: std::collections::BTreeSet<u16> =
            services.iter().filter(|s| s.http).map(|s| s.port).collect();
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), tcp + http_ports.len() + 1);
        // Only the virtual outbound listener binds, and only on loopback.
        let text = b.to_string();
        for l in listeners {
            let a = l["address"]["socket_address"]["address"].as_str().unwrap();
            assert!(a.parse::<Ipv4Addr>().unwrap().is_loopback(), "{a}");
            if l["name"] != "virtualOutbound" {
                assert_eq!(l["bind_to_port"], false);
            }
        }
        assert!(!text.contains("\"10."), "no non-loopback addresses");
    }

    #[test]
    fn addresses_are_distinct_and_loopback() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..3000 {
            for k in 0..4 {
                let a = addr(seed, k);
                assert!(a.is_loopback());
                assert!(seen.insert(a), "{a} twice");
            }
        }
    }
}
