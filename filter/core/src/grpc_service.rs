//! What the filter hands Envoy to open its edge stream: a serialized
//! `envoy.config.core.v3.GrpcService` naming the controller's cluster and, for an Istio
//! outbound cluster (`outbound|<port>|<subset>|<host>`), the `:authority` `<host>:<port>`.
//!
//! Without an authority Envoy's gRPC client sends the cluster name as `:authority`
//! (`GrpcService.EnvoyGrpc.authority`: "if not set, the cluster name"), and the `|`s of
//! `outbound|18000||lazyxds.lazyxds-system.svc.cluster.local` are not valid there: the
//! controller's Istio sidecar refuses every such stream as an HTTP/2 protocol error
//! (`downstream_cx_protocol_error` on its inbound listener; seen in the control-plane tier,
//! `tests/tests/cluster.rs`). Envoy's Wasm host takes the service argument as a serialized
//! `GrpcService` when it parses as one, else as a cluster name
//! (`source/extensions/common/wasm/context.cc`, `Context::grpcStream`).

use lazyxds_proto::cluster::ClusterName;

/// `GrpcService { envoy_grpc: EnvoyGrpc { cluster_name, authority } }`, protobuf-encoded.
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    let authority = ClusterName::parse(cluster)
        .outbound()
        .map(|o| format!("{}:{}", o.host, o.port));
    let mut envoy_grpc = Vec::with_capacity(cluster.len() + 80);
    // EnvoyGrpc.cluster_name = 1, EnvoyGrpc.authority = 2 (strings).
    field(&mut envoy_grpc, 1, cluster.as_bytes());
    if let Some(authority) = &authority {
        field(&mut envoy_grpc, 2, authority.as_bytes());
    }
    // GrpcService.envoy_grpc = 1.
    let mut out = Vec::with_capacity(envoy_grpc.len() + 4);
    field(&mut out, 1, &envoy_grpc);
    out
}

/// A length-delimited field: tag, length, bytes.
fn field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The same message prost encodes (field by field), and the authority only for Istio
    /// outbound cluster names.
    #[test]
    fn the_service_names_the_cluster_and_the_authority() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct EnvoyGrpc {
            #[prost(string, tag = "1")]
            cluster_name: String,
            #[prost(string, tag = "2")]
            authority: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct GrpcService {
            #[prost(message, optional, tag = "1")]
            envoy_grpc: Option<EnvoyGrpc>,
        }
        for (cluster, authority) in [
            (
                "outbound|18000||lazyxds.lazyxds-system.svc.cluster.local",
                "lazyxds.lazyxds-system.svc.cluster.local:18000",
            ),
            ("outbound|9|v1|x.y", "x.y:9"),
            ("lazyxds_controller", ""),
            ("outbound|x||bad", ""),
        ] {
            let got = grpc_service(cluster);
            let decoded = <GrpcService as prost::Message>::decode(got.as_slice()).unwrap();
            let want_authority = authority.to_string();
            assert_eq!(
                decoded,
                GrpcService {
                    envoy_grpc: Some(EnvoyGrpc {
                        cluster_name: cluster.into(),
                        authority: want_authority,
                    })
                },
                "{cluster}"
            );
        }
    }
}
