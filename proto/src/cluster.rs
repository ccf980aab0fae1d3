//! Istio's Envoy cluster names, parsed into typed values.
//!
//! istiod names clusters `outbound|<port>|<subset>|<host>` (the only form that is a
//! dependency edge), `inbound|<port>||`, and a few fixed names (`PassthroughCluster`,
//! `BlackHoleCluster`, `InboundPassthroughCluster...`). Anything else is some other
//! cluster (a user's own, an admin cluster, garbage).

/// A parsed cluster name; borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterName<'a> {
    /// `outbound|port|subset|host`: traffic to a mesh service (or ServiceEntry) host.
    Outbound(Outbound<'a>),
    /// `inbound|port|...`: the workload's own inbound listener clusters.
    Inbound { port: u16 },
    /// `PassthroughCluster`: ALLOW_ANY traffic to unknown destinations.
    Passthrough,
    /// `BlackHoleCluster`: REGISTRY_ONLY traffic to unknown destinations.
    BlackHole,
    /// `InboundPassthroughCluster*` (`InboundPassthroughClusterIpv4`, ...).
    InboundPassthrough,
    /// Anything else, including malformed `outbound|...` names.
    Other,
}

/// The parts of an `outbound|port|subset|host` cluster name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outbound<'a> {
    pub port: u16,
    /// Empty when the cluster has no subset.
    pub subset: &'a str,
    /// The service (or ServiceEntry) host, an FQDN in a mesh.
    pub host: &'a str,
}

/// The name istiod gives the cluster: `outbound|<port>|<subset>|<host>`.
impl std::fmt::Display for Outbound<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "outbound|{}|{}|{}", self.port, self.subset, self.host)
    }
}

impl<'a> ClusterName<'a> {
    /// Parses a cluster name. Never fails: unrecognised names are [`ClusterName::Other`].
    pub fn parse(name: &'a str) -> Self {
        match name {
            "PassthroughCluster" => return ClusterName::Passthrough,
            "BlackHoleCluster" => return ClusterName::BlackHole,
            _ if name.starts_with("InboundPassthroughCluster") => {
                return ClusterName::InboundPassthrough
            }
            _ => {}
        }
        let mut parts = name.splitn(4, '|');
        let (Some(direction), Some(port)) = (parts.next(), parts.next()) else {
            return ClusterName::Other;
        };
        let Some(port) = parse_port(port) else {
            return ClusterName::Other;
        };
        match (direction, parts.next(), parts.next()) {
            ("outbound", Some(subset), Some(host)) if valid_host(host) && !subset.contains('|') => {
                ClusterName::Outbound(Outbound { port, subset, host })
            }
            ("inbound", _, _) => ClusterName::Inbound { port },
            _ => ClusterName::Other,
        }
    }

    /// The outbound parts, when this is a dependency edge.
    pub fn outbound(self) -> Option<Outbound<'a>> {
        match self {
            ClusterName::Outbound(o) => Some(o),
            _ => None,
        }
    }

    /// A short, stable label for counters and logs.
    pub fn kind(self) -> &'static str {
        match self {
            ClusterName::Outbound(_) => "outbound",
            ClusterName::Inbound { .. } => "inbound",
            ClusterName::Passthrough => "passthrough",
            ClusterName::BlackHole => "blackhole",
            ClusterName::InboundPassthrough => "inbound_passthrough",
            ClusterName::Other => "other",
        }
    }
}

/// A port as istiod writes it: plain decimal, 1 to 65535, no sign, no leading zero (so a
/// name parsed as outbound renders back as itself).
fn parse_port(text: &str) -> Option<u16> {
    let mut digits = text.bytes();
    let leading = digits.next()?;
    if !matches!(leading, b'1'..=b'9') || !digits.all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A DNS-ish host: non-empty, at most 253 bytes, no separators or whitespace.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_outbound<'a>(port: u16, subset: &'a str, host: &'a str) -> ClusterName<'a> {
        ClusterName::Outbound(Outbound { port, subset, host })
    }

    #[test]
    fn an_outbound_name_prints_as_istiod_names_it_and_parses_back() {
        for name in [
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
        ] {
            let parsed = ClusterName::parse(name).outbound().unwrap();
            assert_eq!(parsed.to_string(), name);
        }
    }

    #[test]
    fn parses_every_istio_form() {
        let cases = [
            (
                "outbound|9080||reviews.default.svc.cluster.local",
                mk_outbound(9080, "", "reviews.default.svc.cluster.local"),
            ),
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local",
                mk_outbound(9080, "v1", "reviews.default.svc.cluster.local"),
            ),
            (
                "outbound|443||*.example.com",
                mk_outbound(443, "", "*.example.com"),
            ),
            ("outbound|65535||a", mk_outbound(65535, "", "a")),
            ("inbound|8080||", ClusterName::Inbound { port: 8080 }),
            (
                "inbound|8080|http|reviews.default.svc.cluster.local",
                ClusterName::Inbound { port: 8080 },
            ),
            ("PassthroughCluster", ClusterName::Passthrough),
            ("BlackHoleCluster", ClusterName::BlackHole),
            ("InboundPassthroughCluster", ClusterName::InboundPassthrough),
            (
                "InboundPassthroughClusterIpv4",
                ClusterName::InboundPassthrough,
            ),
            (
                "InboundPassthroughClusterIpv6",
                ClusterName::InboundPassthrough,
            ),
            ("xds-grpc", ClusterName::Other),
            ("prometheus_stats", ClusterName::Other),
            ("", ClusterName::Other),
            ("outbound", ClusterName::Other),
            ("outbound|", ClusterName::Other),
            ("outbound|9080", ClusterName::Other),
            ("outbound|9080|", ClusterName::Other),
            ("outbound|9080||", ClusterName::Other),
            ("outbound|0||a.b", ClusterName::Other),
            ("outbound|65536||a.b", ClusterName::Other),
            ("outbound|+80||a.b", ClusterName::Other),
            ("outbound|-1||a.b", ClusterName::Other),
            ("outbound|http||a.b", ClusterName::Other),
            ("outbound|80||a b", ClusterName::Other),
            ("outbound|80||a|b", ClusterName::Other),
            ("outbound|80||réviews", ClusterName::Other),
            ("Outbound|80||a.b", ClusterName::Other),
            ("inbound|x||", ClusterName::Other),
            (
                "outbound_.9080_._.reviews.default.svc.cluster.local",
                ClusterName::Other,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(ClusterName::parse(input), want, "input {input:?}");
        }
    }

    /// istiod writes a port in plain decimal; `07510` is no name it makes, and read as
    /// port 7510 it rendered back as another name (found by `make fuzz`, cluster_name).
    #[test]
    fn a_port_with_a_leading_zero_is_no_istio_name() {
        for name in [
            "inbound|07510|mgmt-15021|mgmtCluster",
            "inbound|00||",
            "outbound|09080||reviews.shop.svc.cluster.local",
            "outbound|00080|v1|a.b",
        ] {
            assert_eq!(ClusterName::parse(name), ClusterName::Other, "{name:?}");
        }
    }

    #[test]
    fn overlong_host_is_not_outbound() {
        let name = format!("outbound|80||{}", "a".repeat(254));
        assert_eq!(ClusterName::parse(&name), ClusterName::Other);
        let name = format!("outbound|80||{}", "a".repeat(253));
        assert!(ClusterName::parse(&name).outbound().is_some());
    }

    #[test]
    fn kinds_are_distinct_labels() {
        let kinds = [
            mk_outbound(1, "", "a").kind(),
            ClusterName::Inbound { port: 1 }.kind(),
            ClusterName::Passthrough.kind(),
            ClusterName::BlackHole.kind(),
            ClusterName::InboundPassthrough.kind(),
            ClusterName::Other.kind(),
        ];
        let unique: std::collections::BTreeSet<_> = kinds.iter().collect();
        assert_eq!(unique.len(), kinds.len());
    }
}
