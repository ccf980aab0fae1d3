//! Request authorities as the caller's own sidecar reads them: Istio's one short-name
//! rule, shared by the gateway filter (which rewrites short authorities before routing)
//! and the controller's index (which maps a requested host to the service it names).
//!
//! A pod of namespace `shop` reaches `reviews.shop.svc.cluster.local` as `reviews`,
//! `reviews.shop` and `reviews.shop.svc`, in any letter case, with or without a port, and
//! by no other short form. That is what Istio itself accepts:
//! - the sidecar's route table: `generateAltVirtualHostsForKubernetesService`
//!   (`pilot/pkg/networking/core/httproute.go`) gives a Service's virtual host the domains
//!   `name`, `name.ns` and `name.ns.svc` (the first only in its own namespace) besides the
//!   FQDN (and `FQDN.`), and Envoy matches virtual-host domains ignoring case;
//! - its DNS proxy: `generateAltHosts` (`pkg/dns/client/dns.go`) answers the same
//!   `name`, `name.ns`, `name.ns.svc` ("just one more domain (which is usually the .svc
//!   piece)") and lower-cases every question first; Kubernetes DNS's search path appends
//!   whole suffixes, so `name.ns.svc.cluster` resolves nowhere.
//!
//! So `name.ns.svc.cluster` is not a short name (it is left alone, like every FQDN),
//! absolute names (`reviews.`) skip the search path, and case never matters.

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
    /// `name.ns.svc[:port]`: always a Service.
    Svc {
        name: &'a str,
        namespace: &'a str,
        port: Option<&'a str>,
    },
    /// Anything else: an FQDN, an external name, an IP literal, a malformed value.
    Other,
}

impl<'a> Authority<'a> {
    /// Classifies a raw `:authority` value (or a host without port).
    pub fn parse(authority: &'a [u8]) -> Authority<'a> {
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
            Some(svc) if svc.eq_ignore_ascii_case("svc") && labels.next().is_none() => {
                Authority::Svc {
                    name,
                    namespace,
                    port,
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
pub fn is_port(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65_535)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "cluster.local";

    fn check(cases: &[(&[u8], Authority<'_>)]) {
        for (input, want) in cases {
            assert_eq!(
                Authority::parse(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

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
            (b"Reviews.Shop.SVC:80", svc("Reviews", "Shop", Some("80"))),
            (b"REVIEWS.SHOP", pair("REVIEWS", "SHOP", None)),
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
        check(&cases);
    }

    /// Istio's sidecar routes and DNS proxy know `name`, `name.ns` and `name.ns.svc`, in
    /// any case, and nothing between `svc` and the full cluster domain (see the module
    /// comment for the sources); a partial domain is left alone, whatever the domain.
    #[test]
    fn only_the_forms_istio_knows_are_short_names() {
        let cases: [(&[u8], Authority<'_>); 7] = [
            (b"reviews.shop.svc", svc("reviews", "shop", None)),
            (b"reviews.shop.SVC", svc("reviews", "shop", None)),
            (b"reviews.shop.svc.cluster", Authority::Other),
            (b"reviews.shop.svc.cluster:9080", Authority::Other),
            (b"reviews.shop.SVC.cluster", Authority::Other),
            (b"reviews.shop.svc.mesh", Authority::Other),
            (b"reviews.shop.svc.mesh.example", Authority::Other),
        ];
        check(&cases);
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
}
