//! Host names: FQDN expansion, Istio's host matching, exportTo, SPIFFE ids, object names.

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// A DNS label as Kubernetes names want it: 1–63 of a-z, 0-9, '-', not starting or ending
/// with '-'.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS domain such as a cluster domain: dot-separated [`is_dns_label`]s.
pub fn is_dns_domain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether a defined host may become a dependency in a Sidecar's egress hosts: a DNS
/// name (any case, as ServiceEntries may write it), or `*.` and one. Never the bare `*`:
/// `*/*` would undo scoping.
pub fn may_be_sidecar_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `name.ns.svc.<domain>`.
pub fn service_fqdn(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}")
}

/// The FQDN a requested host means from a pod in `src_ns`: `reviews`, `reviews.ns` and
/// `reviews.ns.svc` (any case) become `reviews.<ns>.svc.<domain>`, lower case. `None`
/// for anything else (an FQDN, an absolute name, an external name, an IP). Istio's rule,
/// the same the gateway filter applies: [`lazyxds_proto::authority`].
pub fn expand_requested(host: &str, src_ns: &str, cluster_domain: &str) -> Option<String> {
    use lazyxds_proto::authority::{service_authority, Authority};
    let (name, namespace) = match Authority::parse(host.as_bytes()) {
        Authority::Bare { name, port: None } => (name, src_ns),
        Authority::Pair {
            name,
            namespace,
            port: None,
        }
        | Authority::Svc {
            name,
            namespace,
            port: None,
        } => (name, namespace),
        _ => return None,
    };
    Some(service_authority(name, namespace, None, cluster_domain))
}

/// Istio's resolution of a VirtualService host: a name without a dot is relative to the
/// VS namespace; anything else (FQDN, `*.example.com`, `*`) is as written.
pub fn resolve_config_host(host: &str, config_ns: &str, cluster_domain: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        service_fqdn(host, config_ns, cluster_domain)
    }
}

/// Whether `pattern` (`*`, `*.suffix` or exact) covers `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Whether an object with this `exportTo` (empty = everywhere) is visible from `to_ns`.
pub fn exported_to(export_to: &[String], own_ns: &str, to_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == to_ns || (e == "." && own_ns == to_ns))
}

pub use lazyxds_proto::identity::parse_spiffe;

/// FNV-1a, 64 bit: a hash that is stable across Rust releases (names must not change).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Longest Kubernetes object name (DNS-1123 subdomain).
pub const MAX_NAME: usize = 253;

/// `prefix` + `name` as a valid DNS-1123 subdomain of at most 253 bytes; when too long,
/// truncated and suffixed with a hash of the whole name so distinct names stay distinct.
pub fn object_name(prefix: &str, name: &str) -> String {
    let full: String = format!("{prefix}{name}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = format!("{:08x}", fnv1a64(full.as_bytes()) as u32);
    // ASCII only (mapped above), so any length is a character boundary.
    let keep = full
        .get(..MAX_NAME.saturating_sub(hash.len().saturating_add(1)))
        .unwrap_or_default();
    // A label must end with an alphanumeric.
    let keep = keep.trim_end_matches(['-', '.']);
    format!("{keep}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_short_names_like_the_dns_search_path() {
        let cases = [
            ("reviews", Some("reviews.shop.svc.cluster.local")),
            // Istio's rule (lazyxds_proto::authority): absolute names skip the search
            // path, case never matters, nothing between `svc` and the full domain.
            ("reviews.", None),
            (
                "Reviews.Payments.SVC",
                Some("reviews.payments.svc.cluster.local"),
            ),
            ("reviews.payments.svc.cluster", None),
            (
                "reviews.payments",
                Some("reviews.payments.svc.cluster.local"),
            ),
            (
                "reviews.payments.svc",
                Some("reviews.payments.svc.cluster.local"),
            ),
            ("reviews.payments.svc.cluster.local", None),
            ("api.stripe.com", None),
            ("a.b.c.d", None),
            ("10.0.0.1", None),
            ("::1", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(
                expand_requested(host, "shop", DEFAULT_CLUSTER_DOMAIN).as_deref(),
                want,
                "{host}"
            );
        }
    }

    #[test]
    fn config_hosts_resolve_like_istio() {
        let cases = [
            ("reviews", "reviews.shop.svc.cluster.local"),
            ("reviews.other", "reviews.other"),
            ("*.example.com", "*.example.com"),
            ("*", "*"),
        ];
        for (host, want) in cases {
            assert_eq!(resolve_config_host(host, "shop", "cluster.local"), want);
        }
    }

    #[test]
    fn wildcard_matching() {
        let cases = [
            ("*", "a.b", true),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", true),
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "x.example.com", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(matches(pattern, host), want, "{pattern} {host}");
        }
    }

    #[test]
    fn export_to() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (s(&[]), "a", "b", true),
            (s(&["*"]), "a", "b", true),
            (s(&["."]), "a", "a", true),
            (s(&["."]), "a", "b", false),
            (s(&["~"]), "a", "a", false),
            (s(&["b", "c"]), "a", "c", true),
            (s(&["b"]), "a", "a", false),
        ];
        for (export, own, to, want) in cases {
            assert_eq!(exported_to(&export, own, to), want, "{export:?} {own} {to}");
        }
    }

    #[test]
    fn object_names_are_valid_and_bounded() {
        assert_eq!(
            object_name("lazyxds-deployment-", "cart"),
            "lazyxds-deployment-cart"
        );
        assert_eq!(
            object_name("lazyxds-pod-", "Web_1"),
            "lazyxds-pod-web-1",
            "upper case and underscores are not DNS-1123"
        );
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let name = object_name("lazyxds-statefulset-", &long);
        assert_eq!(name.len(), MAX_NAME);
        assert!(name.starts_with("lazyxds-statefulset-aaaa"));
        let other = object_name("lazyxds-statefulset-", &format!("{long}x"));
        assert_ne!(name, other, "the hash keeps truncated names distinct");
        // Truncation right after a `.` or `-` must not leave it before the hash.
        let dotted = format!("{}.{}", "a".repeat(224), "b".repeat(40));
        let name = object_name("lazyxds-deployment-", &dotted);
        assert!(!name.contains(".-") && !name.contains("--"), "{name}");
    }

    #[test]
    fn fnv_is_the_reference_function() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
