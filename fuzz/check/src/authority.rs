//! The short-name rule (`lazyxds_proto::authority`) and the filter's first-call rewrite
//! (`lazyxds_filter_core::routing::Router`), checked against the controller's expansion
//! of a requested host (`lazyxds_index::host::expand_requested`).
//!
//! Input: lines (`\n`), missing ones empty:
//! 0. the request's `:authority` (raw bytes);
//! 1. the peer's URI SAN (`connection.uri_san_peer_certificate`; empty: none);
//! 2. `source.address` (empty: none);
//! 3. flags: `x` the route Envoy picked is the catch-all (an unknown host), `w` requests
//!    may wait for the table (`routing_wait_ms` 200, else 0), `t` a namespace table
//!    arrives first, `r` the mesh is REGISTRY_ONLY;
//! 4. the filter's `cluster_domain` (empty: `cluster.local`; one the config refuses
//!    makes the input no input);
//! 5. the table's namespaces, `,`-separated, each `name` or `name=R` (REGISTRY_ONLY);
//! 6. the table's pods, ` `-separated `ipv4=index` (kept in the order given: the filter
//!    must cope with a table that is not sorted).
//!
//! Properties: a short form the rule accepts renders back to the authority as written
//! (`svc` in any case); a rewrite only ever turns such a short form into
//! `name.ns.svc.<domain>[:port]`, lower case, whose labels are DNS labels, whose port is
//! the one asked for, which the filter never rewrites again, whose `name.ns.svc` is the
//! short form the rule reads back as the same service, and which is exactly the host the
//! controller's index expands the requested host to from that namespace; `.svc` forms are
//! always rewritten; anything else goes on unchanged unless the route is the catch-all;
//! a refusal is for a catch-all request and says REGISTRY_ONLY; a wait happens only
//! before the first table when waiting is on, and ends in a decision.

use lazyxds_filter_core::authority::{is_label, Authority};
use lazyxds_filter_core::{Config, Decision, RequestView, Router};
use lazyxds_index::host::expand_requested;
use lazyxds_proto::v1::{NamespaceTable, OutboundPolicy};

fn field<'a>(lines: &[&'a [u8]], i: usize) -> &'a [u8] {
    lines.get(i).copied().unwrap_or_default()
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// The authority a short form stands for, as written (`svc` lower case).
fn render(form: &Authority<'_>) -> Option<String> {
    let (host, port) = match form {
        Authority::Bare { name, port } => (name.to_string(), port),
        Authority::Pair {
            name,
            namespace,
            port,
        } => (format!("{name}.{namespace}"), port),
        Authority::Svc {
            name,
            namespace,
            port,
        } => (format!("{name}.{namespace}.svc"), port),
        Authority::Other => return None,
    };
    Some(match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

fn check_form(authority: &[u8], form: &Authority<'_>) {
    let Some(rendered) = render(form) else {
        return;
    };
    assert!(
        rendered.as_bytes().eq_ignore_ascii_case(authority),
        "{form:?} renders as {rendered:?}, not {:?}",
        String::from_utf8_lossy(authority)
    );
    let (name, namespace, port) = match *form {
        Authority::Bare { name, port } => (name, None, port),
        Authority::Pair {
            name,
            namespace,
            port,
        }
        | Authority::Svc {
            name,
            namespace,
            port,
        } => (name, Some(namespace), port),
        Authority::Other => return,
    };
    assert!(
        is_label(name) && name.as_bytes()[0].is_ascii_alphabetic(),
        "{form:?}: name"
    );
    assert!(namespace.is_none_or(is_label), "{form:?}: namespace");
    assert!(
        port.is_none_or(lazyxds_proto::authority::is_port),
        "{form:?}: port"
    );
    // Only `svc` may differ in case from what was written.
    let exact = match form {
        Authority::Svc { .. } => rendered.len() - port.map_or(0, |p| p.len() + 1) - 3,
        _ => rendered.len(),
    };
    assert_eq!(
        &rendered.as_bytes()[..exact],
        &authority[..exact],
        "{form:?}"
    );
}

fn table(namespaces: &[u8], pods: &[u8], mesh_registry_only: bool) -> NamespaceTable {
    let policy = |registry_only: bool| {
        if registry_only {
            OutboundPolicy::RegistryOnly as i32
        } else {
            OutboundPolicy::AllowAny as i32
        }
    };
    let mut table = NamespaceTable {
        mesh_policy: policy(mesh_registry_only),
        ..NamespaceTable::default()
    };
    for entry in text(namespaces).split(',').filter(|e| !e.is_empty()) {
        let (name, registry_only) = match entry.strip_suffix("=R") {
            Some(name) => (name, true),
            None => (entry, false),
        };
        table.namespaces.push(name.to_string());
        table.policies.push(policy(registry_only));
    }
    for pod in text(pods).split(' ') {
        let Some((ip, index)) = pod.split_once('=') else {
            continue;
        };
        if let (Ok(ip), Ok(index)) = (ip.parse::<std::net::Ipv4Addr>(), index.parse::<u32>()) {
            table
                .ipv4
                .push((u64::from(u32::from(ip)) << 32) | u64::from(index));
        }
    }
    table
}

pub fn check(bytes: &[u8]) {
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let authority = field(&lines, 0);
    let principal = Some(field(&lines, 1)).filter(|p| !p.is_empty());
    let source = Some(field(&lines, 2)).filter(|s| !s.is_empty());
    let flags = field(&lines, 3);
    let external = flags.contains(&b'x');
    let waits = flags.contains(&b'w');
    let with_table = flags.contains(&b't');

    let form = Authority::parse(authority);
    check_form(authority, &form);

    let domain = Some(text(field(&lines, 4))).filter(|d| !d.is_empty());
    let json = serde_json::json!({
        "cluster_domain": domain.unwrap_or("cluster.local"),
        "routing_wait_ms": if waits { 200 } else { 0 },
    });
    let Ok(config) = Config::parse(json.to_string().as_bytes()) else {
        return;
    };
    let domain = config.cluster_domain.clone();
    let mut router = Router::new(&config);
    if with_table {
        router.apply_table(table(
            field(&lines, 5),
            field(&lines, 6),
            flags.contains(&b'r'),
        ));
    }
    let request = RequestView {
        authority,
        external,
        principal,
        source,
    };
    let mut decision = router.on_request(1, &request, 0);
    if decision == Decision::Wait {
        assert!(
            waits && !with_table,
            "waited with the table or with waiting off"
        );
        assert_eq!(router.paused_len(), 1);
        let due = router.due(u64::MAX);
        assert_eq!(
            due.len(),
            1,
            "a paused request is decided when its wait ends"
        );
        decision = due
            .into_iter()
            .next()
            .map(|(_, d)| d)
            .unwrap_or(Decision::Wait);
        assert_ne!(decision, Decision::Wait, "a timed-out wait decides");
    }
    match &decision {
        Decision::Rewrite(rewritten) => {
            check_rewrite(&mut router, &request, &form, rewritten, &domain)
        }
        Decision::Refuse(body) => {
            assert!(external, "refused a request the mesh routes");
            assert!(body.contains("REGISTRY_ONLY"), "{body:?}");
        }
        Decision::Continue => {
            assert!(
                !matches!(form, Authority::Svc { .. }),
                "a .svc form is always rewritten"
            );
        }
        Decision::Wait => unreachable!("handled above"),
    }
    if matches!(form, Authority::Other) && !external {
        assert_eq!(decision, Decision::Continue, "an FQDN or non-name goes on");
    }
}

fn check_rewrite(
    router: &mut Router,
    request: &RequestView<'_>,
    form: &Authority<'_>,
    rewritten: &str,
    domain: &str,
) {
    let (name, port) = match *form {
        Authority::Bare { name, port }
        | Authority::Pair { name, port, .. }
        | Authority::Svc { name, port, .. } => (name, port),
        Authority::Other => panic!("rewrote {:?}, no short name", request.authority),
    };
    let (host, got_port) = match rewritten.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rewritten, None),
    };
    assert_eq!(got_port, port, "{rewritten:?} keeps the port asked for");
    assert!(
        !rewritten.bytes().any(|b| b.is_ascii_uppercase()),
        "{rewritten:?} is lower case"
    );
    assert!(
        host.split('.').all(is_label),
        "{rewritten:?}: every label is a DNS label"
    );
    let short = host
        .strip_suffix(domain)
        .and_then(|h| h.strip_suffix('.'))
        .unwrap_or_else(|| panic!("{rewritten:?} is not under {domain:?}"));
    let Authority::Svc {
        name: got_name,
        namespace,
        port: None,
    } = Authority::parse(short.as_bytes())
    else {
        panic!("{rewritten:?}: {short:?} is not the name.ns.svc form the rule reads");
    };
    assert!(
        got_name.eq_ignore_ascii_case(name),
        "{rewritten:?} names {name:?}"
    );
    match *form {
        Authority::Pair { namespace: ns, .. } | Authority::Svc { namespace: ns, .. } => {
            assert!(
                ns.eq_ignore_ascii_case(namespace),
                "{rewritten:?} keeps {ns:?}"
            )
        }
        _ => {}
    }
    // What the controller's index makes of the requested host from that namespace.
    let requested = match port {
        Some(port) => &request.authority[..request.authority.len() - port.len() - 1],
        None => request.authority,
    };
    assert_eq!(
        expand_requested(text(requested), namespace, domain).as_deref(),
        Some(host),
        "the filter and the controller's index expand {:?} alike",
        String::from_utf8_lossy(requested)
    );
    // An FQDN is never rewritten again.
    assert_eq!(Authority::parse(rewritten.as_bytes()), Authority::Other);
    let again = RequestView {
        authority: rewritten.as_bytes(),
        ..*request
    };
    assert!(
        !matches!(router.on_request(2, &again, 0), Decision::Rewrite(_)),
        "{rewritten:?} rewritten again"
    );
}
