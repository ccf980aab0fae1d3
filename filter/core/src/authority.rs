//! Request authorities (Istio's short-name rule, shared with the controller:
//! [`lazyxds_proto::authority`]) and SPIFFE identities.

pub use lazyxds_proto::authority::{is_label, service_authority, Authority, MAX_AUTHORITY_LEN};

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

    #[test]
    fn the_shared_rule_runs_here() {
        // The rule itself is tested where it lives; this runs it on wasm32 too.
        assert_eq!(
            Authority::parse(b"Reviews.Shop.SVC:9080"),
            Authority::Svc {
                name: "Reviews",
                namespace: "Shop",
                port: Some("9080")
            }
        );
        assert_eq!(
            Authority::parse(b"reviews.shop.svc.cluster"),
            Authority::Other
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
