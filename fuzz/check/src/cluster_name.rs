//! Istio cluster names, as the filter reads `xds.cluster_name` and the controller reads
//! an edge's cluster. Input: the name's raw bytes.
//!
//! Properties: a name parsed as `outbound|port|subset|host` renders back to the same
//! string and parses again to the same value; its port is not 0, its subset has no `|`,
//! its host is a DNS-ish name; `inbound|port|...` keeps the port as written; the filter
//! takes exactly the outbound names the controller's parser takes (and none the
//! controller would refuse for length).

use lazyxds_filter_core::edge_cluster;
use lazyxds_proto::cluster::ClusterName;
use lazyxds_proto::limits::MAX_NAME_BYTES;

pub fn check(bytes: &[u8]) {
    let from_filter = edge_cluster(bytes);
    let Ok(name) = std::str::from_utf8(bytes) else {
        assert_eq!(
            from_filter, None,
            "the filter took a non-UTF-8 cluster name"
        );
        return;
    };
    let parsed = ClusterName::parse(name);
    match parsed {
        ClusterName::Outbound(outbound) => {
            let rendered = outbound.to_string();
            assert_eq!(rendered, name, "an outbound name renders back as parsed");
            assert_eq!(ClusterName::parse(&rendered), parsed, "and parses the same");
            assert_ne!(outbound.port, 0, "{name:?}: port 0");
            assert!(!outbound.subset.contains('|'), "{name:?}: subset with '|'");
            assert!(
                !outbound.host.is_empty() && outbound.host.len() <= 253,
                "{name:?}: host length"
            );
            assert!(
                outbound
                    .host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b)),
                "{name:?}: host characters"
            );
            let want = (name.len() <= MAX_NAME_BYTES).then_some(name);
            assert_eq!(
                from_filter, want,
                "the filter takes outbound names in limits"
            );
        }
        ClusterName::Inbound { port } => {
            assert_ne!(port, 0, "{name:?}: port 0");
            let prefix = format!("inbound|{port}");
            let rest = name.strip_prefix(&prefix);
            assert!(
                rest.is_some_and(|r| r.is_empty() || r.starts_with('|')),
                "{name:?}: inbound port {port} is not the port as written"
            );
            assert_eq!(from_filter, None, "an inbound cluster is no edge");
        }
        ClusterName::Passthrough | ClusterName::BlackHole | ClusterName::InboundPassthrough => {
            assert_eq!(from_filter, None, "{name:?} is no edge");
        }
        ClusterName::Other => assert_eq!(from_filter, None, "{name:?} is no edge"),
    }
    assert!(!parsed.kind().is_empty());
}
