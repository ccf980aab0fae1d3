//! Edges as the controller reports them, and the exact set a load run should produce.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::client::Outcome;
use crate::controller::EdgeRow;

/// The identity of an edge at the controller.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeKey {
    pub source_ip: IpAddr,
    pub host: Option<String>,
    pub cluster: String,
    pub principal: Option<String>,
}

impl fmt::Display for EdgeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} via {}",
            self.source_ip,
            self.host.as_deref().unwrap_or("<no host>"),
            self.cluster
        )?;
        if let Some(p) = &self.principal {
            write!(f, " as {p}")?;
        }
        Ok(())
    }
}

/// How the filter reports a Host header: lower-case, without the port.
pub fn normalize_host(host: &str) -> String {
    let h = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    h.to_ascii_lowercase()
}

/// Istio's mesh clusters; everything else (PassthroughCluster, BlackHoleCluster, ...) is not an
/// edge.
pub fn is_edge_cluster(cluster: &str) -> bool {
    cluster.starts_with("outbound|")
}

/// The edges a load run must produce, with the number of requests sent on each: one per
/// (source, host, cluster) of every request a backend of an `outbound|…` cluster answered.
/// The cluster comes from the backend's `x-backend` header, so weighted routes are exact.
pub fn expected_edges(outcomes: &[Outcome]) -> BTreeMap<EdgeKey, u64> {
    let mut out = BTreeMap::new();
    for o in outcomes {
        let (Some(200), Some(cluster)) = (o.status, o.backend.as_deref()) else {
            continue;
        };
        if !is_edge_cluster(cluster) {
            continue;
        }
        let key = EdgeKey {
            source_ip: IpAddr::V4(o.source),
            host: Some(normalize_host(&o.host)),
            cluster: cluster.to_string(),
            principal: None,
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Expected edges with a minimum request count each.
pub fn with_counts(edges: &BTreeMap<EdgeKey, u64>) -> BTreeMap<EdgeKey, Option<u64>> {
    edges.iter().map(|(k, v)| (k.clone(), Some(*v))).collect()
}

/// Expected edges, any request count.
pub fn any_count<'a>(
    edges: impl IntoIterator<Item = &'a EdgeKey>,
) -> BTreeMap<EdgeKey, Option<u64>> {
    edges.into_iter().map(|k| (k.clone(), None)).collect()
}

/// Expected versus reported edges.
#[derive(Debug, Default)]
pub struct EdgeDiff {
    /// Expected, but absent or with fewer requests than sent: (edge, wanted, got).
    pub missing_or_short: Vec<(EdgeKey, Option<u64>, Option<u64>)>,
    /// Reported, not expected.
    pub unexpected: Vec<EdgeRow>,
}

impl EdgeDiff {
    pub fn is_empty(&self) -> bool {
        self.missing_or_short.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for EdgeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} missing or short, {} unexpected",
            self.missing_or_short.len(),
            self.unexpected.len()
        )?;
        for (k, want, got) in self.missing_or_short.iter().take(20) {
            match got {
                None => writeln!(f, "  missing: {k}")?,
                Some(g) => writeln!(f, "  short:   {k}: {g} requests reported, {want:?} sent")?,
            }
        }
        for r in self.unexpected.iter().take(20) {
            writeln!(f, "  unexpected: {} ({} requests)", r.key(), r.requests)?;
        }
        Ok(())
    }
}

pub fn diff(expected: &BTreeMap<EdgeKey, Option<u64>>, rows: &[EdgeRow]) -> EdgeDiff {
    let mut got: BTreeMap<EdgeKey, &EdgeRow> = BTreeMap::new();
    for r in rows {
        got.insert(r.key(), r);
    }
    let mut d = EdgeDiff::default();
    for (k, want) in expected {
        match (got.get(k), want) {
            (None, _) => d.missing_or_short.push((k.clone(), *want, None)),
            (Some(r), Some(w)) if r.requests < *w => {
                d.missing_or_short
                    .push((k.clone(), *want, Some(r.requests)))
            }
            _ => {}
        }
    }
    d.unexpected = rows
        .iter()
        .filter(|r| !expected.contains_key(&r.key()))
        .cloned()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_host_strips_port_and_case() {
        assert_eq!(
            normalize_host("Reviews.Default.svc.cluster.local:9080"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("a:"), "a:");
    }

    #[test]
    fn expected_edges_counts_only_mesh_clusters_that_answered() {
        let src = std::net::Ipv4Addr::new(127, 0, 0, 10);
        let mk = |host: &str, status: Option<u16>, backend: Option<&str>| Outcome {
            source: src,
            host: host.into(),
            status,
            backend: backend.map(str::to_string),
            error: None,
            done_at: None,
        };
        let got = expected_edges(&[
            mk("R:9080", Some(200), Some("outbound|9080|v1|r")),
            mk("r", Some(200), Some("outbound|9080|v1|r")),
            mk("r", Some(200), Some("outbound|9080|v2|r")),
            mk("example.com", Some(200), Some("PassthroughCluster")),
            mk("nope", Some(404), None),
            mk("r", None, None),
        ]);
        let key = |c: &str| EdgeKey {
            source_ip: IpAddr::V4(src),
            host: Some("r".into()),
            cluster: c.into(),
            principal: None,
        };
        assert_eq!(
            got,
            BTreeMap::from([
                (key("outbound|9080|v1|r"), 2),
                (key("outbound|9080|v2|r"), 1)
            ])
        );
    }
}
