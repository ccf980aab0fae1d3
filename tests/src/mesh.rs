//! A gateway for a whole topology file: the routes istiod would give the lazy gateway
//! (one virtual host per service port, a VirtualService's host routed to its destination),
//! each cluster backed by a local server. Used by the demo and the Sidecar tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use lazyxds_index::host::resolve_config_host;
use lazyxds_index::{Protocol, Topology};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::controller::Controller;
use crate::envoy::Envoy;
use crate::gateway::{plugin_config, CONTROLLER_CLUSTER, TEST_CONCURRENCY};
use crate::ports::free_port;

const CLUSTER_DOMAIN: &str = "cluster.local";

/// One routable `host:port` and the cluster it goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub host: String,
    pub port: u16,
    pub cluster: String,
}

/// The HTTP routes of a topology: every HTTP-capable Service port, with VirtualService
/// hosts sent to their (first) destination like Istio does.
pub fn routes(topology: &Topology) -> Vec<Route> {
    let objects = &topology.objects;
    let mut by_host: BTreeMap<(String, u16), String> = BTreeMap::new();
    for svc in &objects.services {
        let host = svc.host(CLUSTER_DOMAIN);
        for port in &svc.ports {
            if Protocol::of_service_port(port).may_carry_http() {
                let cluster = format!("outbound|{}||{host}", port.port);
                by_host.insert((host.clone(), port.port), cluster);
            }
        }
    }
    for vs in &objects.virtual_services {
        let Some(dest) = vs.destinations.first() else {
            continue;
        };
        let dest = resolve_config_host(dest, &vs.namespace, CLUSTER_DOMAIN);
        for host in &vs.hosts {
            let host = resolve_config_host(host, &vs.namespace, CLUSTER_DOMAIN);
            let ports: Vec<u16> = by_host
                .keys()
                .filter(|(h, _)| *h == dest)
                .map(|(_, p)| *p)
                .collect();
            for port in ports {
                by_host.insert((host.clone(), port), format!("outbound|{port}||{dest}"));
            }
        }
    }
    by_host
        .into_iter()
        .map(|((host, port), cluster)| Route {
            host,
            port,
            cluster,
        })
        .collect()
}

/// The Envoy bootstrap (JSON, which Envoy reads as YAML) for `routes`: the lazyxds filter
/// configured as in `envoyfilter/local/gateway.yaml`, a 404 for anything unrouted.
pub fn bootstrap(
    routes: &[Route],
    listen_port: u16,
    admin_port: u16,
    controller_port: u16,
    wasm: &Path,
    plugin_config: &str,
    backend_ports: &BTreeMap<String, u16>,
) -> Result<String> {
    let mut vhosts: Vec<Value> = routes
        .iter()
        .map(|r| {
            json!({
                "name": format!("{}:{}", r.host, r.port),
                "domains": [format!("{}:{}", r.host, r.port)],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": r.cluster}}],
            })
        })
        .collect();
    vhosts.push(json!({
        "name": "unknown", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}}],
    }));
    let mut clusters = Vec::new();
    for cluster in routes.iter().map(|r| &r.cluster).collect::<BTreeSet<_>>() {
        let port = backend_ports
            .get(cluster.as_str())
            .with_context(|| format!("no backend for cluster {cluster}"))?;
        clusters.push(static_cluster(cluster, *port, false));
    }
    clusters.push(static_cluster(CONTROLLER_CLUSTER, controller_port, true));
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": {"name": "gateway", "virtual_hosts": vhosts},
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.wasm",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                    "config": {
                                        "name": "lazyxds", "root_id": "lazyxds",
                                        "failure_policy": "FAIL_RELOAD",
                                        "configuration": {
                                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                                            "value": plugin_config,
                                        },
                                        "vm_config": {
                                            "vm_id": "lazyxds", "runtime": "envoy.wasm.runtime.v8",
                                            "code": {"local": {"filename": wasm.display().to_string()}},
                                        },
                                    },
                                },
                            },
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    });
    Ok(serde_json::to_string_pretty(&config)?)
}

fn static_cluster(name: &str, port: u16, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        });
    }
    cluster
}

/// Backends, the controller in file mode, and the gateway for a topology file.
#[derive(Debug)]
pub struct MeshStack {
    pub envoy: Envoy,
    pub controller: Controller,
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
    pub listen_port: u16,
}

impl MeshStack {
    /// Starts everything; the controller runs `--file topology_path --out out_dir`.
    pub async fn start(
        topology_path: &Path,
        out_dir: &Path,
        concurrency: Option<u32>,
    ) -> Result<MeshStack> {
        let text = std::fs::read_to_string(topology_path)
            .with_context(|| format!("reading {}", topology_path.display()))?;
        let topology = Topology::from_yaml(&text, &topology_path.display().to_string())?;
        let routes = routes(&topology);
        let wasm = crate::paths::wasm_path()?;
        crate::paths::envoy_bin()?;
        let mut backends = Vec::new();
        for cluster in routes
            .iter()
            .map(|r| r.cluster.as_str())
            .collect::<BTreeSet<_>>()
        {
            backends.push(Backend::start(cluster).await?);
        }
        let file = topology_path.display().to_string();
        let out = out_dir.display().to_string();
        let controller = Controller::start_with_args(&["--file", &file, "--out", &out]).await?;
        let listen_port = free_port()?;
        let config = bootstrap(
            &routes,
            listen_port,
            free_port()?,
            controller.grpc_port(),
            &wasm,
            &plugin_config(json!({})),
            &backends
                .iter()
                .map(|b| (b.name().to_string(), b.port()))
                .collect(),
        )?;
        let envoy = Envoy::start(&config, concurrency.unwrap_or(TEST_CONCURRENCY)).await?;
        Ok(MeshStack {
            envoy,
            controller,
            backends,
            routes,
            listen_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = include_str!("../../controller/index/testdata/demo-topology.yaml");

    #[test]
    fn routes_cover_http_ports_and_follow_virtual_services() {
        let topology = Topology::from_yaml(TOPOLOGY, "demo-topology.yaml").unwrap();
        let routes = routes(&topology);
        let find = |host: &str, port: u16| {
            routes
                .iter()
                .find(|r| r.host == host && r.port == port)
                .map(|r| r.cluster.as_str())
        };
        assert_eq!(
            find("reviews.shop.svc.cluster.local", 9080),
            Some("outbound|9080||reviews-v2.shop.svc.cluster.local"),
            "the VS sends reviews to reviews-v2"
        );
        assert_eq!(
            find("ratings.shop.svc.cluster.local", 9081),
            Some("outbound|9081||ratings.shop.svc.cluster.local")
        );
        assert_eq!(
            find("postgres.shop.svc.cluster.local", 5432),
            None,
            "TCP-only"
        );
    }
}

/// The demo topology file (`controller/index/testdata/demo-topology.yaml`).
pub fn demo_topology_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/index/testdata/demo-topology.yaml")
}

/// Who calls what in the demo topology: (client pod IP, `host:port`). Hosts are FQDNs
/// (short names need the gateway's authority rewrite, a later feature).
pub fn demo_traffic() -> Vec<(std::net::Ipv4Addr, &'static str)> {
    use std::net::Ipv4Addr;
    let pod = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    vec![
        // productpage (2 pods): reviews (a VirtualService → reviews-v2) and details.
        (pod(10), "reviews.shop.svc.cluster.local:9080"),
        (pod(10), "details.shop.svc.cluster.local:9080"),
        (pod(11), "reviews.shop.svc.cluster.local:9080"),
        (pod(11), "details.shop.svc.cluster.local:9080"),
        // reviews-v1 and reviews-v2: ratings (v2 also its admin port).
        (pod(12), "ratings.shop.svc.cluster.local:9080"),
        (pod(13), "ratings.shop.svc.cluster.local:9080"),
        (pod(13), "ratings.shop.svc.cluster.local:9081"),
        // details opted out: learned, but it gets no Sidecar.
        (pod(15), "ratings.shop.svc.cluster.local:9080"),
        // cart (2 pods): catalog, and across namespaces the payments API.
        (pod(16), "catalog.shop.svc.cluster.local:9080"),
        (pod(17), "payments-api.payments.svc.cluster.local:9080"),
        // payments-api: fraud and ledger; ledger: notifications.
        (pod(20), "fraud.payments.svc.cluster.local:9080"),
        (pod(20), "ledger.payments.svc.cluster.local:9080"),
        (pod(22), "notifications.payments.svc.cluster.local:9080"),
        // Nothing routes this: a 404, and no edge.
        (pod(21), "nowhere.payments.svc.cluster.local:9080"),
    ]
}

/// A generated Sidecar file, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarFile {
    pub file: std::path::PathBuf,
    /// `namespace/Kind/name`.
    pub workload: String,
    /// Learned deps (keys of the `lazyxds.io/deps` annotation).
    pub deps: BTreeSet<String>,
    pub egress_hosts: Vec<String>,
}

/// Every Sidecar YAML file in `dir`, by workload.
pub fn read_sidecar_files(dir: &Path) -> Result<BTreeMap<String, SidecarFile>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let file = entry?.path();
        if file.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        let v: Value = serde_norway::from_str(&text).with_context(|| file.display().to_string())?;
        let meta = &v["metadata"];
        let annotation = |k: &str| {
            meta["annotations"][k]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let deps: BTreeMap<String, u64> = serde_json::from_str(&annotation("lazyxds.io/deps"))
            .with_context(|| format!("{}: lazyxds.io/deps", file.display()))?;
        let workload = format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap_or_default(),
            annotation("lazyxds.io/workload")
        );
        let egress_hosts = v["spec"]["egress"][0]["hosts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            workload.clone(),
            SidecarFile {
                file,
                workload,
                deps: deps.into_keys().collect(),
                egress_hosts,
            },
        );
    }
    Ok(out)
}
