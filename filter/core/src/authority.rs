//! Request authorities as a pod's DNS search path reads them, and SPIFFE identities.
//!
//! A pod of namespace `shop` resolves `reviews`, `reviews.shop`, `reviews.shop.svc` and
//! `reviews.shop.svc.cluster` to `reviews.shop.svc.cluster.local`; the gateway only has
//! routes for the full name, so these short forms are rewritten before routing. Anything
//! else (FQDNs, external names, IP literals, malformed values) is left exactly as sent.

/// Longest authority considered (a DNS name is at most 253 bytes, plus `:65535`).
pub const MAX_AUTHORITY_LEN: usize = 259;

/// What an authority names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority<'a> {
    /// `name` or `name:port`: a Service of the caller's own namespace.
    Bare {
        name: &'a str,
        port: Option<&'a str>,
    },
    /// `name.ns[:port]`: a Service of namespace `ns` if `ns` is a namespace of the mesh,
    /// else an external name such as `example.com`.
    Pair {
        name: &'a str,
        namespace: &'a str,
        port: Option<&'a str>,
    },
    /// `name.ns.svc[:port]`, `name.ns.svc.cluster[:port]` (a proper prefix of the cluster
    /// domain after `svc`): always a Service.
    Svc {
        name: &'a str,
        namespace: &'a str,
        port: Option<&'a str>,
    },
    /// Anything else: an FQDN, an external name, an IP literal, a malformed value.
    Other,
}

impl<'a> Authority<'a> {
    /// Classifies a raw `:authority` value; `cluster_domain` is e.g. `cluster.local`.
    pub fn parse(authority: &'a [u8], cluster_domain: &str) -> Authority<'a> {
        let Ok(authority) = core::str::from_utf8(authority) else {
            return Authority::Other;
        };
        if authority.len() > MAX_AUTHORITY_LEN {
            return Authority::Other;
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) if is_port(port) => (host, Some(port)),
            Some(_) => return Authority::Other,
            None => (authority, None),
        };
        let mut labels = host.split('.');
        let name = labels.next().unwrap_or_default();
        // A Service name is a DNS-1035 label: it starts with a letter (so no IP literal
        // is ever taken for one).
        if !is_label(name) || !name.as_bytes()[0].is_ascii_alphabetic() {
            return Authority::Other;
        }
        let Some(namespace) = labels.next() else {
            return Authority::Bare { name, port };
        };
        if !is_label(namespace) {
            return Authority::Other;
        }
        match labels.next() {
            None => Authority::Pair {
                name,
                namespace,
                port,
            },
            Some(svc) if svc.eq_ignore_ascii_case("svc") => {
                // What follows `svc` must be a proper prefix of the domain's labels.
                let mut domain = cluster_domain.split('.');
                let follows =
                    labels.all(|l| domain.next().is_some_and(|d| d.eq_ignore_ascii_case(l)));
                if follows && domain.next().is_some() {
                    Authority::Svc {
                        name,
                        namespace,
                        port,
                    }
                } else {
                    Authority::Other
                }
            }
            Some(_) => Authority::Other,
        }
    }
}

/// `name.namespace.svc.<domain>[:port]`, lower-case.
pub fn service_authority(
    name: &str,
    namespace: &str,
    port: Option<&str>,
    cluster_domain: &str,
) -> String {
    let mut out = String::with_capacity(name.len() + namespace.len() + cluster_domain.len() + 12);
    for part in [name, ".", namespace, ".svc.", cluster_domain] {
        out.push_str(part);
    }
    if let Some(port) = port {
        out.push(':');
        out.push_str(port);
    }
    out.make_ascii_lowercase();
    out
}

/// A DNS label: 1 to 63 ASCII letters, digits and hyphens, not starting or ending with a
/// hyphen.
pub fn is_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// 1 to 5 digits, at most 65535.
fn is_port(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65_535)
}

/// The namespace of a verified peer identity `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
pub fn spiffe_namespace(principal: &[u8]) -> Option<&str> {
    let principal = core::str::from_utf8(principal).ok()?;
    let (ns, _sa) = lazyxds_proto::identity::parse_spiffe(principal)?;
    is_label(ns).then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const DOMAIN: &str = "cluster.local";

    fn bare<'a>(name: &'a str, port: Option<&'a str>) -> Authority<'a> {
        Authority::Bare { name, port }
    }

    fn pair<'a>(name: &'a str, namespace: &'a str, port: Option<&'a str>) -> Authority<'a> {
        Authority::Pair {
            name,
            namespace,
            port,
        }
    }

    fn svc<'a>(name: &'a str, namespace: &'a str, port: Option<&'a str>) -> Authority<'a> {
        Authority::Svc {
            name,
            namespace,
            port,
        }
    }

    #[test]
    fn every_authority_form() {
        let long_label = format!("{}.shop", "r".repeat(64));
        let long = "a.".repeat(130);
        let cases: Vec<(&[u8], Authority<'_>)> = vec![
            (b"reviews", bare("reviews", None)),
            (b"reviews:9080", bare("reviews", Some("9080"))),
            (b"Reviews:80", bare("Reviews", Some("80"))),
            (b"reviews-v2", bare("reviews-v2", None)),
            (b"reviews.shop", pair("reviews", "shop", None)),
            (b"reviews.shop:9080", pair("reviews", "shop", Some("9080"))),
            (b"example.com", pair("example", "com", None)),
            (b"reviews.shop.svc", svc("reviews", "shop", None)),
            (
                b"reviews.shop.svc:9080",
                svc("reviews", "shop", Some("9080")),
            ),
            (b"reviews.shop.SVC.cluster", svc("reviews", "shop", None)),
            (
                b"reviews.shop.svc.cluster:9080",
                svc("reviews", "shop", Some("9080")),
            ),
            // Already full, or not under the cluster domain.
            (b"reviews.shop.svc.cluster.local", Authority::Other),
            (b"reviews.shop.svc.cluster.local:9080", Authority::Other),
            (b"reviews.shop.svc.cluster.local.", Authority::Other),
            (b"reviews.shop.svc.other", Authority::Other),
            (b"reviews.shop.svc.cluster.local.x", Authority::Other),
            (b"api.example.com", Authority::Other),
            (b"www.example.com:443", Authority::Other),
            // Absolute names skip the search path.
            (b"reviews.", Authority::Other),
            (b"reviews.shop.", Authority::Other),
            // IP literals.
            (b"10.0.0.1", Authority::Other),
            (b"10.0.0.1:8080", Authority::Other),
            (b"127.0.0.1", Authority::Other),
            (b"[fd00::1]:80", Authority::Other),
            (b"[fd00::1]", Authority::Other),
            (b"fd00::1", Authority::Other),
            (b"1reviews", Authority::Other),
            // Garbage.
            (b"", Authority::Other),
            (b":9080", Authority::Other),
            (b"reviews:", Authority::Other),
            (b"reviews:http", Authority::Other),
            (b"reviews:99999", Authority::Other),
            (b"reviews:123456", Authority::Other),
            (b"reviews:90:80", Authority::Other),
            (b"-reviews", Authority::Other),
            (b"reviews-", Authority::Other),
            (b"re_views", Authority::Other),
            (b"re views", Authority::Other),
            (b"reviews..shop", Authority::Other),
            (b".reviews", Authority::Other),
            (b"user@reviews", Authority::Other),
            (b"reviews/x", Authority::Other),
            ("r\u{e9}views".as_bytes(), Authority::Other),
            (
                "\u{440}\u{435}\u{432}\u{44c}\u{44e}".as_bytes(),
                Authority::Other,
            ),
            (b"xn--rviews-bva", bare("xn--rviews-bva", None)),
            (b"r\xffviews", Authority::Other),
            (long_label.as_bytes(), Authority::Other),
            (long.as_bytes(), Authority::Other),
        ];
        for (input, want) in cases {
            assert_eq!(
                Authority::parse(input, DOMAIN),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn other_cluster_domains() {
        assert_eq!(
            Authority::parse(b"reviews.shop.svc.mesh", "mesh.example.org"),
            svc("reviews", "shop", None)
        );
        assert_eq!(
            Authority::parse(b"reviews.shop.svc.mesh.example", "mesh.example.org"),
            svc("reviews", "shop", None)
        );
        assert_eq!(
            Authority::parse(b"reviews.shop.svc.mesh.example.org", "mesh.example.org"),
            Authority::Other
        );
        assert_eq!(
            Authority::parse(b"reviews.shop.svc.cluster", "mesh.example.org"),
            Authority::Other
        );
    }

    #[test]
    fn service_authorities_are_lower_case_and_keep_the_port() {
        assert_eq!(
            service_authority("Reviews", "shop", Some("9080"), DOMAIN),
            "reviews.shop.svc.cluster.local:9080"
        );
        assert_eq!(
            service_authority("reviews", "shop", None, DOMAIN),
            "reviews.shop.svc.cluster.local"
        );
    }

    #[test]
    fn spiffe_identities() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (
                b"spiffe://cluster.local/ns/shop/sa/productpage",
                Some("shop"),
            ),
            (b"spiffe://td.example/ns/ns-a/sa/default", Some("ns-a")),
            (b"spiffe://cluster.local/ns/shop/sa/", None),
            (b"spiffe://cluster.local/ns//sa/x", None),
            (b"spiffe://cluster.local/ns/shop/sa/x/extra", None),
            (b"spiffe://cluster.local/sa/x/ns/shop", None),
            (b"https://cluster.local/ns/shop/sa/x", None),
            (b"spiffe://cluster.local", None),
            (b"spiffe://cluster.local/ns/sh\xffop/sa/x", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                spiffe_namespace(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
