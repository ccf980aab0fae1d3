//! One request's properties, as Envoy hands them to the filter, turned into an edge.

use core::net::IpAddr;
use lazyxds_proto::cluster::ClusterName;
use lazyxds_proto::limits::MAX_NAME_BYTES;

/// The raw property values of one request (`None` = Envoy has no value).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestProperties<'a> {
    /// `xds.cluster_name`: the upstream cluster Envoy picked; `None` when no route matched.
    pub cluster: Option<&'a [u8]>,
    /// `source.address`: `ip:port` of the downstream peer.
    pub source: Option<&'a [u8]>,
    /// `request.host`: the `:authority` as routed.
    pub host: Option<&'a [u8]>,
    /// `connection.uri_san_peer_certificate`: the verified peer's first URI SAN.
    pub principal: Option<&'a [u8]>,
}

/// A dependency edge borrowed from a request's properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdgeRef<'a> {
    pub source_ip: IpAddr,
    /// Lower-case authority without port; `None` when absent or unusable.
    pub host: Option<&'a str>,
    pub cluster: &'a str,
    pub principal: Option<&'a str>,
}

/// Why a request produced no edge. Each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No route matched (no upstream cluster).
    NoRoute,
    /// The cluster is not an `outbound|...` service cluster.
    NotOutbound,
    /// The source address is missing or not `ip:port`.
    BadSource,
}

/// Longest host we keep; DNS names are at most 253 bytes.
const MAX_HOST_LEN: usize = 253;
/// Longest principal we keep (SPIFFE IDs are at most 2048 bytes; Istio's are short; the
/// controller accepts names up to [`MAX_NAME_BYTES`]).
pub(crate) const MAX_PRINCIPAL_LEN: usize = 512;
const _: () = assert!(MAX_PRINCIPAL_LEN <= MAX_NAME_BYTES && MAX_HOST_LEN <= MAX_NAME_BYTES);

impl<'a> RequestProperties<'a> {
    /// The edge this request represents, or why it is none.
    ///
    /// `host` is only borrowed when it is already lower-case; otherwise the lower-cased
    /// copy is written to `host_buf` (kept by the caller to avoid an allocation per call).
    pub fn edge(&self, host_buf: &'a mut String) -> Result<EdgeRef<'a>, Skip> {
        let cluster = self.cluster.ok_or(Skip::NoRoute)?;
        let cluster = EdgeCluster::new(cluster).ok_or(Skip::NotOutbound)?;
        CheckedProperties {
            cluster,
            source_ip: self.source.and_then(parse_source_ip),
            host: self.host,
            principal: self.principal,
        }
        .edge(host_buf)
    }
}

/// An `outbound|port|subset|host` cluster name, checked by [`edge_cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeCluster<'a>(&'a str);

impl<'a> EdgeCluster<'a> {
    pub fn new(cluster: &'a [u8]) -> Option<EdgeCluster<'a>> {
        edge_cluster(cluster).map(EdgeCluster)
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// A request's values as the shell has them on the hot path: the cluster checked once per
/// request (the shell needs to know first whether the request is an edge at all), the
/// source address parsed once per connection ([`crate::Peer`]). Gives the same edge as
/// [`RequestProperties::edge`] on the raw values.
#[derive(Debug, Clone, Copy)]
pub struct CheckedProperties<'a> {
    pub cluster: EdgeCluster<'a>,
    /// `source.address` as [`parse_source_ip`] reads it.
    pub source_ip: Option<IpAddr>,
    /// `request.host`: the `:authority` as routed.
    pub host: Option<&'a [u8]>,
    /// `connection.uri_san_peer_certificate`.
    pub principal: Option<&'a [u8]>,
}

impl<'a> CheckedProperties<'a> {
    /// The edge, or why it is none (only [`Skip::BadSource`] is left to find out).
    pub fn edge(&self, host_buf: &'a mut String) -> Result<EdgeRef<'a>, Skip> {
        let source_ip = self.source_ip.ok_or(Skip::BadSource)?;
        let host = self.host.and_then(|h| normalize_host(h, host_buf));
        let principal = self
            .principal
            .filter(|p| !p.is_empty() && p.len() <= MAX_PRINCIPAL_LEN)
            .and_then(|p| core::str::from_utf8(p).ok());
        Ok(EdgeRef {
            source_ip,
            host,
            cluster: self.cluster.as_str(),
            principal,
        })
    }
}

/// The cluster name when it is an `outbound|port|subset|host` edge cluster. The shell
/// asks this first, to skip reading the other properties of requests that are no edge.
/// A name longer than the controller accepts ([`MAX_NAME_BYTES`]) is none: Istio never
/// makes one (subsets are DNS labels), and the controller would refuse the whole batch.
pub fn edge_cluster(cluster: &[u8]) -> Option<&str> {
    if cluster.len() > MAX_NAME_BYTES {
        return None;
    }
    let cluster = core::str::from_utf8(cluster).ok()?;
    ClusterName::parse(cluster).outbound().map(|_| cluster)
}

/// Parses Envoy's `source.address`: `1.2.3.4:5678`, `[::1]:5678`, or a bare IP.
/// IPv4-mapped IPv6 addresses are reported as IPv4 (the pod's address).
#[inline(never)] // two callers (edges, routing): one copy in the module
pub fn parse_source_ip(address: &[u8]) -> Option<IpAddr> {
    let address = core::str::from_utf8(address).ok()?;
    let ip_text = if let Some(rest) = address.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        match address.rsplit_once(':') {
            // A single colon: ip:port. More: a bare IPv6 address.
            Some((ip, port)) if !ip.contains(':') && is_port(port) => ip,
            _ => address,
        }
    };
    let ip: IpAddr = ip_text.parse().ok()?;
    Some(ip.to_canonical())
}

/// The authority without its port, lower-cased; `None` if empty, overlong or not UTF-8.
pub fn normalize_host<'a>(authority: &'a [u8], buf: &'a mut String) -> Option<&'a str> {
    let authority = core::str::from_utf8(authority).ok()?;
    let host = strip_port(authority);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        buf.clear();
        buf.push_str(host);
        buf.make_ascii_lowercase();
        Some(buf.as_str())
    } else {
        Some(host)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port or [v6]
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && is_port(port) => host,
        _ => authority,
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";

    fn mk_props<'a>(
        cluster: Option<&'a str>,
        source: Option<&'a str>,
        host: Option<&'a str>,
        principal: Option<&'a str>,
    ) -> RequestProperties<'a> {
        RequestProperties {
            cluster: cluster.map(str::as_bytes),
            source: source.map(str::as_bytes),
            host: host.map(str::as_bytes),
            principal: principal.map(str::as_bytes),
        }
    }

    #[test]
    fn checked_properties_give_the_raw_values_edge() {
        // The shell's hot path checks the cluster once and parses the source once per
        // connection; the edge (or the skip) must be the one of the raw values.
        let long_principal = "p".repeat(MAX_PRINCIPAL_LEN + 1);
        let clusters = [
            Some(REVIEWS),
            Some("outbound|9080|v1|Reviews.Default.svc.cluster.local"),
            Some("inbound|9080||"),
            Some("PassthroughCluster"),
            Some("outbound|x||a.b"),
            None,
        ];
        let sources = [
            Some("10.1.2.3:5000"),
            Some("[::ffff:10.0.0.7]:99"),
            Some("not-an-ip:80"),
            None,
        ];
        let hosts = [
            Some("Reviews.Default:9080"),
            Some("reviews"),
            Some(""),
            None,
        ];
        let principals = [
            Some("spiffe://cluster.local/ns/a/sa/b"),
            Some(""),
            Some(long_principal.as_str()),
            None,
        ];
        for cluster in clusters {
            for source in sources {
                for host in hosts {
                    for principal in principals {
                        let raw = mk_props(cluster, source, host, principal);
                        let mut buf = String::new();
                        let want = format!("{:?}", raw.edge(&mut buf));
                        let checked = cluster.and_then(|c| EdgeCluster::new(c.as_bytes()));
                        let got = match checked {
                            Some(cluster) => {
                                let props = CheckedProperties {
                                    cluster,
                                    source_ip: raw.source.and_then(parse_source_ip),
                                    host: raw.host,
                                    principal: raw.principal,
                                };
                                let mut buf = String::new();
                                format!("{:?}", props.edge(&mut buf))
                            }
                            None => format!(
                                "{:?}",
                                Err::<EdgeRef<'_>, _>(if cluster.is_none() {
                                    Skip::NoRoute
                                } else {
                                    Skip::NotOutbound
                                })
                            ),
                        };
                        assert_eq!(got, want, "{cluster:?} {source:?} {host:?} {principal:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn source_addresses() {
        let v4 = |a, b, c, d| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        let cases: [(&[u8], Option<IpAddr>); 12] = [
            (b"127.0.0.2:44376", v4(127, 0, 0, 2)),
            (b"10.1.2.3:1", v4(10, 1, 2, 3)),
            (b"10.1.2.3", v4(10, 1, 2, 3)),
            (b"[::1]:8080", Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
            (
                b"[fd00::5]",
                Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5))),
            ),
            (
                b"fd00::5",
                Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5))),
            ),
            (b"[::ffff:10.0.0.7]:99", v4(10, 0, 0, 7)),
            (b"", None),
            (b"not-an-ip:80", None),
            (b"10.1.2.3:port", None),
            (b"[::1", None),
            (b"\xff\xfe:80", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_source_ip(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn hosts_lose_port_and_case() {
        let long = "a".repeat(254);
        let cases: [(&str, Option<&str>); 11] = [
            ("reviews", Some("reviews")),
            ("reviews:9080", Some("reviews")),
            (
                "Reviews.Default.svc.cluster.local:9080",
                Some("reviews.default.svc.cluster.local"),
            ),
            ("10.0.0.1:80", Some("10.0.0.1")),
            ("[fd00::1]:80", Some("[fd00::1]")),
            ("[fd00::1]", Some("[fd00::1]")),
            ("fd00::1", Some("fd00::1")),
            ("host:notaport", Some("host:notaport")),
            ("", None),
            (":80", None),
            (long.as_str(), None),
        ];
        for (input, want) in cases {
            let mut buf = String::new();
            assert_eq!(
                normalize_host(input.as_bytes(), &mut buf),
                want,
                "{input:?}"
            );
        }
        let mut buf = String::new();
        assert_eq!(normalize_host(b"r\xffeviews", &mut buf), None);
    }

    #[test]
    fn requests_become_edges_or_skips() {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
        let spiffe = "spiffe://cluster.local/ns/a/sa/b";
        let cases = [
            (
                mk_props(
                    Some(REVIEWS),
                    Some("127.0.0.10:5000"),
                    Some("reviews:9080"),
                    None,
                ),
                Ok(EdgeRef {
                    source_ip: ip,
                    host: Some("reviews"),
                    cluster: REVIEWS,
                    principal: None,
                }),
            ),
            (
                mk_props(Some(REVIEWS), Some("127.0.0.10:5000"), None, Some(spiffe)),
                Ok(EdgeRef {
                    source_ip: ip,
                    host: None,
                    cluster: REVIEWS,
                    principal: Some(spiffe),
                }),
            ),
            (
                mk_props(Some(REVIEWS), Some("127.0.0.10:5000"), Some("x"), Some("")),
                Ok(EdgeRef {
                    source_ip: ip,
                    host: Some("x"),
                    cluster: REVIEWS,
                    principal: None,
                }),
            ),
            (
                mk_props(None, Some("127.0.0.10:5000"), Some("x"), None),
                Err(Skip::NoRoute),
            ),
            (
                mk_props(Some("PassthroughCluster"), Some("127.0.0.10:1"), None, None),
                Err(Skip::NotOutbound),
            ),
            (
                mk_props(Some("inbound|80||"), Some("127.0.0.10:1"), None, None),
                Err(Skip::NotOutbound),
            ),
            (
                mk_props(Some("garbage"), Some("127.0.0.10:1"), None, None),
                Err(Skip::NotOutbound),
            ),
            (
                mk_props(Some(REVIEWS), None, None, None),
                Err(Skip::BadSource),
            ),
            (
                mk_props(Some(REVIEWS), Some("pipe"), None, None),
                Err(Skip::BadSource),
            ),
        ];
        for (props, want) in cases {
            let mut buf = String::new();
            assert_eq!(props.edge(&mut buf), want, "{props:?}");
        }
    }

    #[test]
    fn non_utf8_cluster_is_not_outbound_and_overlong_principal_is_dropped() {
        let mut buf = String::new();
        let props = RequestProperties {
            cluster: Some(b"outbound|80||\xff"),
            source: Some(b"127.0.0.1:1"),
            ..Default::default()
        };
        assert_eq!(props.edge(&mut buf), Err(Skip::NotOutbound));
        // A cluster name the controller would refuse (the whole batch with it) is no edge.
        let subset = "s".repeat(MAX_NAME_BYTES);
        let overlong = format!("outbound|80|{subset}|reviews.default.svc.cluster.local");
        let props = mk_props(Some(&overlong), Some("127.0.0.1:1"), None, None);
        assert_eq!(props.edge(&mut buf), Err(Skip::NotOutbound));
        let long = "p".repeat(MAX_PRINCIPAL_LEN + 1);
        let props = mk_props(Some(REVIEWS), Some("127.0.0.1:1"), None, Some(&long));
        let mut buf = String::new();
        assert_eq!(props.edge(&mut buf).map(|e| e.principal), Ok(None));
    }
}
