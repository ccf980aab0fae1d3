//! What the shell passes to `proxy_grpc_stream` as its "service": the controller's cluster,
//! with the `:authority` its requests carry.
//!
//! Envoy's async gRPC client sends the cluster name as `:authority` when a filter names only
//! a cluster. istiod names the controller's cluster `outbound|18000||lazyxds.<ns>.svc…`, and
//! `|` is not allowed in an authority: the controller's HTTP/2 server refuses every such
//! stream (RST_STREAM PROTOCOL_ERROR, "malformed authority"), so a gateway in a real mesh
//! never reports an edge (found by the mini-mesh, `tests/tests/mesh.rs`). Envoy also takes a
//! serialized `envoy.config.core.v3.GrpcService` there (it tries to parse one first:
//! source/extensions/common/wasm/context.cc, `Context::grpcStream`), whose
//! `envoy_grpc.authority` sets the authority: for an Istio outbound cluster, the Service host.

/// The bytes to open the controller stream with: for an Istio outbound cluster name
/// (`outbound|<port>|<subset>|<host>`), a `GrpcService { envoy_grpc { cluster_name,
/// authority: host } }`; any other name as it is (Envoy uses it as a cluster name).
pub fn grpc_service_target(cluster: &str) -> Vec<u8> {
    let mut parts = cluster.split('|');
    let host = match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("outbound"), Some(_port), Some(_subset), Some(host), None) if !host.is_empty() => {
            host
        }
        _ => return cluster.as_bytes().to_vec(),
    };
    // EnvoyGrpc: cluster_name = 1, authority = 2 (both strings).
    let mut envoy_grpc = Vec::new();
    put_string(&mut envoy_grpc, 1, cluster);
    put_string(&mut envoy_grpc, 2, host);
    // GrpcService: envoy_grpc = 1.
    let mut out = Vec::new();
    put_bytes(&mut out, 1, &envoy_grpc);
    out
}

fn put_string(out: &mut Vec<u8>, field: u8, value: &str) {
    put_bytes(out, field, value.as_bytes());
}

/// A length-delimited field (wire type 2).
fn put_bytes(out: &mut Vec<u8>, field: u8, value: &[u8]) {
    out.push((field << 3) | 2);
    let mut len = value.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_outbound_clusters_get_their_host_as_authority_other_names_pass_through() {
        let istio = "outbound|18000||lazyxds.lazyxds-system.svc.cluster.local";
        let host = "lazyxds.lazyxds-system.svc.cluster.local";
        let mut inner = vec![0x0a, istio.len() as u8];
        inner.extend_from_slice(istio.as_bytes());
        inner.extend_from_slice(&[0x12, host.len() as u8]);
        inner.extend_from_slice(host.as_bytes());
        let mut want = vec![0x0a, inner.len() as u8];
        want.extend_from_slice(&inner);
        let table: &[(&str, Vec<u8>)] = &[
            (istio, want),
            ("sink", b"sink".to_vec()),
            ("outbound|18000||", b"outbound|18000||".to_vec()),
            ("inbound|18000||x", b"inbound|18000||x".to_vec()),
            ("outbound|1|a|b|c", b"outbound|1|a|b|c".to_vec()),
        ];
        for (cluster, want) in table {
            assert_eq!(&grpc_service_target(cluster), want, "{cluster}");
        }
    }

    #[test]
    fn long_names_get_multi_byte_lengths() {
        let host = format!("{}.svc.cluster.local", "a".repeat(200));
        let cluster = format!("outbound|18000||{host}");
        let out = grpc_service_target(&cluster);
        // Outer length > 127: two varint bytes after the tag.
        assert_eq!(out[0], 0x0a);
        assert!(out[1] & 0x80 != 0);
        let inner_len = usize::from(out[1] & 0x7f) | (usize::from(out[2]) << 7);
        assert_eq!(inner_len, out.len() - 3);
    }
}
