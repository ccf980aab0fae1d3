//! A gateway for a whole topology file, configured from what the controller renders: the
//! controller (file mode) writes the gateway's VirtualServices and EnvoyFilter, and the
//! gateway Envoy gets the routes istiod would generate from them ([`crate::istio`]). Each
//! cluster is backed by a local server (HTTP/1.1, or gRPC over h2c for HTTP/2 ports); the
//! catch-all's dynamic forward proxy resolves through a fake DNS on 127.0.0.1, where
//! "external" names lead to a local "Internet" server. Used by the demo and the e2e tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lazyxds_index::{Protocol, Topology};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::controller::Controller;
use crate::dns::FakeDns;
use crate::envoy::Envoy;
use crate::gateway::{plugin_config, CONTROLLER_CLUSTER, TEST_CONCURRENCY};
use crate::grpc::GrpcBackend;
use crate::istio::{gateway_routes, GatewayRoutes};
use crate::pki::{Ca, CertFiles};
use crate::ports::free_port;

/// The gateway's identity (its Service host) and its mTLS server certificate's SAN.
pub const GATEWAY_HOST: &str = "lazyxds-gateway.lazyxds-system.svc.cluster.local";
/// Name of the local server standing in for the Internet.
pub const INTERNET: &str = "internet";

/// Where the controller writes the gateway objects under `--out` (see its file mode).
pub fn gateway_objects_file(out_dir: &Path) -> PathBuf {
    out_dir.join("gateway").join("lazyxds-gateway.yaml")
}

/// Reads a multi-document YAML file of Kubernetes objects.
pub fn read_objects(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.split("\n---\n")
        .flat_map(|d| d.strip_prefix("---\n").or(Some(d)))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_norway::from_str(d).with_context(|| format!("parsing {}", path.display())))
        .collect()
}

/// Whether Istio talks HTTP/2 to this `outbound|port|subset|host` cluster (HTTP2, gRPC).
pub fn is_h2_cluster(topology: &Topology, cluster: &str) -> bool {
    let mut parts = cluster.split('|');
    let (Some(_), Some(port), Some(_), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(port) = port.parse::<u16>() else {
        return false;
    };
    let objects = &topology.objects;
    let h2 = |p: Protocol| matches!(p, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb);
    let services = objects
        .services
        .iter()
        .filter(|s| s.host("cluster.local") == host);
    let service_ports = services.flat_map(|s| s.ports.iter());
    let entries = objects
        .service_entries
        .iter()
        .filter(|se| se.hosts.iter().any(|h| h == host));
    service_ports
        .filter(|p| p.port == port)
        .any(|p| h2(Protocol::of_service_port(p)))
        || entries
            .flat_map(|se| se.ports.iter())
            .filter(|p| p.number == port)
            .any(|p| h2(p.istio_protocol()))
}

/// How the gateway Envoy is built.
#[derive(Debug, Clone)]
pub struct BootstrapParams<'a> {
    pub routes: &'a GatewayRoutes,
    pub listen_port: u16,
    pub admin_port: u16,
    pub controller_port: u16,
    pub wasm: &'a Path,
    pub plugin_config: &'a str,
    /// Cluster name → backend port (127.0.0.1).
    pub backend_ports: &'a BTreeMap<String, u16>,
    /// Clusters Envoy talks HTTP/2 (h2c) to.
    pub h2_clusters: &'a BTreeSet<String>,
    /// The resolver of the dynamic forward proxy (never the system's).
    pub dns: std::net::SocketAddr,
    /// An mTLS listener (`ISTIO_MUTUAL`: client certificates required): port, the
    /// gateway's certificate, the mesh CA.
    pub mtls: Option<(u16, &'a CertFiles, &'a Path)>,
}

/// The gateway's Envoy bootstrap (JSON, which Envoy reads as YAML): the lazyxds filter as in
/// `envoyfilter/local/gateway.yaml`, then the EnvoyFilter's HTTP filters, then the router.
pub fn bootstrap(p: &BootstrapParams<'_>) -> Result<String> {
    let resolver = json!({
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
            "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": p.dns.port(), "protocol": "UDP"}}],
            "use_resolvers_as_fallback": false,
            "dns_resolver_options": {"no_default_search_domain": true},
        },
    });
    // Loopback only: the forward proxy resolves through the fake DNS, never the system's.
    let with_resolver = |mut v: Value| {
        for path in [
            "/typed_config/dns_cache_config",
            "/cluster_type/typed_config/dns_cache_config",
        ] {
            if let Some(cache) = v.pointer_mut(path) {
                cache["typed_dns_resolver_config"] = resolver.clone();
            }
        }
        v
    };
    let mut http_filters = vec![json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "lazyxds", "root_id": "lazyxds",
                "failure_policy": "FAIL_RELOAD",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": p.plugin_config,
                },
                "vm_config": {
                    "vm_id": "lazyxds", "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": p.wasm.display().to_string()}},
                },
            },
        },
    })];
    http_filters.extend(
        p.routes
            .extra_http_filters
            .iter()
            .cloned()
            .map(with_resolver),
    );
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "gateway",
            // As Istio's gateways: the caller is the peer, never an x-forwarded-for hop.
            "use_remote_address": true,
            "route_config": {
                "name": "gateway",
                // As Istio's gateway RDS: `host:port` matches the domain `host`.
                "ignore_port_in_host_matching": true,
                "virtual_hosts": p.routes.virtual_hosts,
            },
            "http_filters": http_filters,
        },
    });
    let mut listeners = vec![json!({
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": p.listen_port}},
        "filter_chains": [{"filters": [hcm.clone()]}],
    })];
    if let Some((port, cert, ca)) = p.mtls {
        listeners.push(json!({
            "name": "gateway-mtls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "filters": [hcm],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": {
                            "tls_certificates": [{
                                "certificate_chain": {"filename": cert.cert.display().to_string()},
                                "private_key": {"filename": cert.key.display().to_string()},
                            }],
                            "validation_context": {"trusted_ca": {"filename": ca.display().to_string()}},
                        },
                    },
                },
            }],
        }));
    }
    let mut clusters = Vec::new();
    for cluster in &p.routes.clusters {
        let port = p
            .backend_ports
            .get(cluster)
            .with_context(|| format!("no backend for cluster {cluster}"))?;
        clusters.push(static_cluster(
            cluster,
            *port,
            p.h2_clusters.contains(cluster),
        ));
    }
    clusters.push(static_cluster(CONTROLLER_CLUSTER, p.controller_port, true));
    clusters.extend(p.routes.extra_clusters.iter().cloned().map(with_resolver));
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p.admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
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

/// How to start a [`MeshStack`].
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Gateway Envoy worker threads.
    pub concurrency: u32,
    /// On top of the test plugin configuration (replaces the default's keys it names).
    pub plugin: Value,
    /// Also an `ISTIO_MUTUAL`-style listener (client certificates required).
    pub mtls: bool,
    /// Names the fake DNS resolves to 127.0.0.1 (where the "Internet" server listens).
    pub internet_names: Vec<String>,
    /// Stop the controller before the gateway starts (restart it with
    /// `stack.controller.restart()`): workers then start without a namespace table.
    pub controller_down: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            concurrency: TEST_CONCURRENCY,
            // A request needing the namespace table right after the start waits for it
            // longer than the 200 ms default: a busy test machine must not make the
            // first calls flaky (the wait itself is tested with the controller down).
            plugin: json!({"routing_wait_ms": 3000}),
            mtls: false,
            internet_names: Vec::new(),
            controller_down: false,
        }
    }
}

/// Backends, the controller in file mode, and the gateway for a topology file.
#[derive(Debug)]
pub struct MeshStack {
    pub envoy: Envoy,
    pub controller: Controller,
    pub backends: Vec<Backend>,
    pub grpc_backends: Vec<GrpcBackend>,
    /// The "Internet": every external name leads here (any port the test gives in Host
    /// reaches this server only if it is this port).
    pub internet: Backend,
    pub dns: FakeDns,
    pub routes: GatewayRoutes,
    /// The controller's rendered gateway objects.
    pub objects: Vec<Value>,
    pub listen_port: u16,
    /// The mTLS listener, when asked for.
    pub mtls_port: Option<u16>,
    /// The mesh CA, when mTLS was asked for.
    pub ca: Option<Ca>,
}

impl MeshStack {
    /// Starts everything with default options; the controller runs
    /// `--file topology_path --out out_dir`.
    pub async fn start(
        topology_path: &Path,
        out_dir: &Path,
        concurrency: Option<u32>,
    ) -> Result<MeshStack> {
        let options = MeshOptions {
            concurrency: concurrency.unwrap_or(TEST_CONCURRENCY),
            ..MeshOptions::default()
        };
        MeshStack::start_with(topology_path, out_dir, options).await
    }

    pub async fn start_with(
        topology_path: &Path,
        out_dir: &Path,
        options: MeshOptions,
    ) -> Result<MeshStack> {
        let text = std::fs::read_to_string(topology_path)
            .with_context(|| format!("reading {}", topology_path.display()))?;
        let topology = Topology::from_yaml(&text, &topology_path.display().to_string())?;
        let wasm = crate::paths::wasm_path()?;
        crate::paths::envoy_bin()?;
        let file = topology_path.display().to_string();
        let out = out_dir.display().to_string();
        let mut controller = Controller::start_with_args(&["--file", &file, "--out", &out]).await?;
        let objects_file = gateway_objects_file(out_dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !objects_file.is_file() {
            if Instant::now() > deadline {
                bail!(
                    "the controller wrote no {} ; log:\n{}",
                    objects_file.display(),
                    controller.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let objects = read_objects(&objects_file)?;
        let routes = gateway_routes(&objects)?;
        let mut backends = Vec::new();
        let mut grpc_backends = Vec::new();
        let mut h2_clusters = BTreeSet::new();
        let mut backend_ports = BTreeMap::new();
        for cluster in &routes.clusters {
            if is_h2_cluster(&topology, cluster) {
                let b = GrpcBackend::start(cluster).await?;
                backend_ports.insert(cluster.clone(), b.port());
                h2_clusters.insert(cluster.clone());
                grpc_backends.push(b);
            } else {
                let b = Backend::start(cluster).await?;
                backend_ports.insert(cluster.clone(), b.port());
                backends.push(b);
            }
        }
        let internet = Backend::start(INTERNET).await?;
        let dns = FakeDns::start(
            options
                .internet_names
                .iter()
                .map(|n| (n.to_ascii_lowercase(), Ipv4Addr::LOCALHOST))
                .collect(),
        )
        .await?;
        let ca = if options.mtls { Some(Ca::new()?) } else { None };
        let gateway_cert = match &ca {
            Some(ca) => Some(ca.issue("lazyxds-system", "lazyxds-gateway", &[GATEWAY_HOST])?),
            None => None,
        };
        let mtls_port = match &ca {
            Some(_) => Some(free_port()?),
            None => None,
        };
        if options.controller_down {
            controller.kill();
        }
        let listen_port = free_port()?;
        let plugin = plugin_config(options.plugin.clone());
        let config = bootstrap(&BootstrapParams {
            routes: &routes,
            listen_port,
            admin_port: free_port()?,
            controller_port: controller.grpc_port(),
            wasm: &wasm,
            plugin_config: &plugin,
            backend_ports: &backend_ports,
            h2_clusters: &h2_clusters,
            dns: dns.addr(),
            mtls: match (mtls_port, &gateway_cert, &ca) {
                (Some(port), Some(cert), Some(ca)) => Some((port, cert, ca.ca_file())),
                _ => None,
            },
        })?;
        let envoy = Envoy::start(&config, options.concurrency).await?;
        Ok(MeshStack {
            envoy,
            controller,
            backends,
            grpc_backends,
            internet,
            dns,
            routes,
            objects,
            listen_port,
            mtls_port,
            ca,
        })
    }

    /// The backend of a cluster (HTTP/1.1 ones).
    pub fn backend(&self, cluster: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name() == cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = include_str!("../../controller/index/testdata/demo-topology.yaml");

    #[test]
    fn grpc_and_http2_ports_get_h2_clusters() {
        let topology = Topology::from_yaml(TOPOLOGY, "demo-topology.yaml").unwrap();
        for (cluster, want) in [
            ("outbound|9090||cart.shop.svc.cluster.local", true),
            ("outbound|9080||cart.shop.svc.cluster.local", false),
            ("outbound|9080||reviews-v2.shop.svc.cluster.local", false),
            ("outbound|9090||nothing.shop.svc.cluster.local", false),
            ("PassthroughCluster", false),
        ] {
            assert_eq!(is_h2_cluster(&topology, cluster), want, "{cluster}");
        }
    }

    #[test]
    fn reads_multi_document_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.yaml");
        std::fs::write(&path, "---\nkind: A\n---\nkind: B\n").unwrap();
        let kinds: Vec<Value> = read_objects(&path)
            .unwrap()
            .into_iter()
            .map(|o| o["kind"].clone())
            .collect();
        assert_eq!(kinds, [json!("A"), json!("B")]);
    }
}

/// The demo topology file (`controller/index/testdata/demo-topology.yaml`).
pub fn demo_topology_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/index/testdata/demo-topology.yaml")
}

/// Who calls what in the demo topology: (client pod IP, `host:port`), with the short names
/// applications use. The gateway expands them from the caller's namespace (its pod IP is in
/// the controller's namespace table), so every first call is routed.
pub fn demo_traffic() -> Vec<(std::net::Ipv4Addr, &'static str)> {
    use std::net::Ipv4Addr;
    let pod = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    vec![
        // productpage (2 pods): reviews (a VirtualService → reviews-v2) and details.
        (pod(10), "reviews:9080"),
        (pod(10), "details:9080"),
        (pod(11), "reviews:9080"),
        (pod(11), "details.shop:9080"),
        // reviews-v1 and reviews-v2: ratings (v2 also its admin port).
        (pod(12), "ratings:9080"),
        (pod(13), "ratings:9080"),
        (pod(13), "ratings:9081"),
        // details opted out: learned, but it gets no Sidecar.
        (pod(15), "ratings.shop.svc:9080"),
        // cart (2 pods): catalog, and across namespaces the payments API.
        (pod(16), "catalog:9080"),
        (pod(17), "payments-api.payments:9080"),
        // payments-api: fraud and ledger; ledger: notifications.
        (pod(20), "fraud:9080"),
        (pod(20), "ledger.payments.svc.cluster.local:9080"),
        (pod(22), "notifications:9080"),
        // No such service: a 404 that says so, and no edge.
        (pod(21), "nowhere:9080"),
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
        // The workload's catch-all EnvoyFilter, then its Sidecar.
        let Some(v) = read_objects(&file)?
            .into_iter()
            .find(|o| o["kind"] == "Sidecar")
        else {
            continue;
        };
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
