//! Istio workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

/// `(namespace, service account)` of an Istio SPIFFE ID; `None` for anything else.
pub fn parse_spiffe(principal: &str) -> Option<(&str, &str)> {
    let rest = principal.strip_prefix("spiffe://")?;
    let (_trust_domain, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some((ns, sa))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        let cases = [
            (
                "spiffe://cluster.local/ns/shop/sa/cart",
                Some(("shop", "cart")),
            ),
            ("spiffe://td/ns/a/sa/b/extra", None),
            ("spiffe://td/ns//sa/b", None),
            ("spiffe://td/ns/a/sa/", None),
            ("spiffe://td/sa/b/ns/a", None),
            ("https://td/ns/a/sa/b", None),
            ("spiffe://td", None),
        ];
        for (principal, want) in cases {
            assert_eq!(parse_spiffe(principal), want, "{principal}");
        }
    }
}
