//! istiod (`pilot-discovery discovery`) out of cluster, configured like a default install:
//! mesh config from the `istio` ConfigMap in `istio-system`, its own CA self-signing into the
//! `istio-ca-secret` Secret.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::Result;
use serde_json::json;

use super::{bin, Cluster, CLUSTER_DOMAIN, CLUSTER_ID};
use crate::ports::free_port;
use crate::process::Proc;

pub const ISTIO_NAMESPACE: &str = "istio-system";
/// The name istiod's serving certificate is issued for; proxies check it (`ISTIOD_SAN`).
pub const ISTIOD_SAN: &str = "istiod.istio-system.svc";

/// istiod's listen ports (all on the cluster's listen address).
#[derive(Debug, Clone, Default)]
pub struct IstiodAddrs {
    pub address: Option<Ipv4Addr>,
    /// Debug and readiness endpoints (`/ready`, `/debug/*`).
    pub http: u16,
    /// Plaintext xDS.
    pub grpc: u16,
    /// xDS and the CA over TLS: what proxies connect to (15012 in a cluster).
    pub secure_grpc: u16,
    pub monitoring: u16,
}

impl IstiodAddrs {
    /// `host:port` of the secure xDS/CA endpoint.
    pub fn discovery_address(&self) -> String {
        format!(
            "{}:{}",
            self.address.unwrap_or(Ipv4Addr::LOCALHOST),
            self.secure_grpc
        )
    }
}

/// The mesh config a default install would have, minus the metrics provider (with
/// `defaultProviders.metrics: [prometheus]` istiod emits the `istio.stats` filter, which only
/// Istio's own Envoy build has) and with `discoveryAddress` pointing at this istiod.
pub fn mesh_config(discovery_address: &str) -> String {
    format!(
        "trustDomain: {CLUSTER_DOMAIN}\n\
         rootNamespace: {ISTIO_NAMESPACE}\n\
         enablePrometheusMerge: false\n\
         defaultConfig:\n  discoveryAddress: {discovery_address}\n"
    )
}

pub(super) fn start(cluster: &Cluster) -> Result<(IstiodAddrs, Proc)> {
    let listen = cluster.listen();
    let addrs = IstiodAddrs {
        address: Some(listen),
        http: free_port()?,
        grpc: free_port()?,
        secure_grpc: free_port()?,
        monitoring: free_port()?,
    };
    cluster.apply_json(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": ISTIO_NAMESPACE},
            "data": {"mesh": mesh_config(&addrs.discovery_address()), "meshNetworks": "networks: {}"}}),
    ])?;
    // istiod resolves its working files relative to its working directory
    // (./etc/istio/config/mesh, ./var/lib/istio/inject, ./etc/cacerts): an empty one makes it
    // read the mesh config from the ConfigMap and self-sign its CA, as in a cluster.
    let dir = cluster.dir().join("istiod");
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(bin("pilot-discovery")?);
    cmd.current_dir(&dir)
        .arg("discovery")
        .arg(format!(
            "--kubeconfig={}",
            cluster.admin_kubeconfig().display()
        ))
        .arg(format!("--httpAddr={listen}:{}", addrs.http))
        .arg(format!("--grpcAddr={listen}:{}", addrs.grpc))
        .arg(format!("--secureGRPCAddr={listen}:{}", addrs.secure_grpc))
        .arg(format!("--monitoringAddr={listen}:{}", addrs.monitoring))
        .arg(format!("--httpsAddr={listen}:{}", free_port()?))
        .arg(format!("--ctrlz_address={listen}"))
        .arg(format!("--ctrlz_port={}", free_port()?))
        .arg(format!("--domain={CLUSTER_DOMAIN}"))
        .arg(format!("--clusterID={CLUSTER_ID}"))
        .arg("--log_output_level=default:info")
        .env("POD_NAMESPACE", ISTIO_NAMESPACE)
        .env("POD_NAME", "istiod-test")
        .env("REVISION", "default")
        .env("CLUSTER_ID", CLUSTER_ID)
        .env("PILOT_ENABLE_METADATA_EXCHANGE", "false")
        .env("PILOT_ENABLE_ALPN_FILTER", "false")
        // Off by default in Istio; on here, the stricter mode: a gateway gets only the
        // clusters its VirtualServices route to and those an EnvoyFilter selecting it names
        // (`envoyfilter.istio.io/referenced-services`), so the tier shows that the lazy
        // gateway still gets every cluster it needs, the controller's included. Sidecars
        // are not affected (routers only: pilot/pkg/networking/core/cluster.go).
        .env("PILOT_FILTER_GATEWAY_CLUSTER_CONFIG", "true")
        .env_remove("PEER_METADATA_DISCOVERY")
        .env("KUBECONFIG", cluster.admin_kubeconfig());
    let proc = Proc::spawn("istiod", &mut cmd, &cluster.dir().join("istiod.log"))?;
    Ok((addrs, proc))
}
