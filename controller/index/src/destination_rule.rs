//! Which DestinationRule a caller's sidecar applies to its cluster for the lazy gateway, and
//! whether first calls then still leave over Istio mTLS: the gateway's server is
//! `ISTIO_MUTUAL` (that is how the filter learns who calls), so a first call in plaintext,
//! with other certificates or behind a PROXY header fails.
//!
//! istiod's lookup for a proxy in namespace N and a host H (`pilot/pkg/model/push_context.go`,
//! `destinationRule`):
//!
//! 1. N's own rules that N sees — no exportTo, `*`, `.` or `N`, and every rule with a
//!    workloadSelector (those are private: `setDestinationRules`) — the most specific host
//!    first (`MostSpecificHostMatch`, `config.go`: H itself, else the longest wildcard
//!    covering it, `*` included);
//! 2. else the exported rules of H's namespace: ours, for the gateway's host;
//! 3. else the root namespace's.
//!
//! So only step 1 puts another rule before ours (the root namespace's `*.local`
//! `ISTIO_MUTUAL` rule of many meshes never does): a rule in the caller's namespace for the
//! gateway's FQDN, `*.<gateway ns>.svc.cluster.local`, `*.svc.cluster.local`,
//! `*.cluster.local`, `*.local` or `*`. Of the rules step 1 found, the sidecar takes one
//! whose workloadSelector matches its labels, else one without a selector, else **none**
//! (`SidecarScope.DestinationRule`, `sidecar.go`) — and with none the cluster has no TLS:
//! auto-mTLS covers only endpoints labelled `security.istio.io/tlsMode`, which gateway pods
//! are not (Istio's gateway injection template does not add it).
//!
//! What a rule does to the connection is precise where Istio is simple, conservative where
//! it is intricate. Precise: which rules win (host, namespace, exportTo, selector), and that
//! a winner with `tls.mode: ISTIO_MUTUAL` for the port breaks nothing — namespaces commonly
//! have exactly such a `*.local` rule to enforce mTLS, and refusing them would refuse the
//! meshes that are most careful. Conservative: several winners for one host are merged by
//! istiod by creation time and, since `ENABLE_ENHANCED_DESTINATIONRULE_MERGE`, by exportTo
//! (`mergeDestinationRule`, `destination_rule.go`); rather than model that merge, every rule
//! that may apply must be safe on its own. And `subjectAltNames` under `ISTIO_MUTUAL` count
//! as unsafe: they replace the identities the gateway's certificate is checked against.

use std::fmt;

use serde::Serialize;

use crate::host;
use crate::index::Index;
use crate::objects::{ConnectionPolicy, DestinationRule, Labels};

/// A DestinationRule of the caller's namespace that would take the gateway's place, and
/// what it does to first calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadow {
    /// `ns/name`.
    pub rule: String,
    /// Its host, resolved in its namespace.
    pub host: String,
    pub effect: Effect,
}

/// What a shadowing rule does to a connection to the gateway's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// No `tls` for the port (a port-level entry without one replaces the rule's own):
    /// plaintext.
    NoTls { port_level: bool },
    /// Another TLS mode (`DISABLE`, `SIMPLE`, `MUTUAL`; unset is `DISABLE`).
    Mode { mode: String, port_level: bool },
    /// `ISTIO_MUTUAL` that checks the gateway against other identities.
    SubjectAltNames,
    /// A PROXY protocol header before every connection.
    ProxyProtocol,
    /// Every rule found selects other workloads: istiod applies none, so no TLS.
    SelectsOthers,
}

impl fmt::Display for Shadow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Shadow { rule, host, effect } = self;
        let at = |port_level: &bool| if *port_level { " at port level" } else { "" };
        let what = match effect {
            Effect::NoTls { port_level } => {
                format!("sets no tls{} (plaintext)", at(port_level))
            }
            Effect::Mode { mode, port_level } => {
                format!("sets tls mode {mode}{}", at(port_level))
            }
            Effect::SubjectAltNames => {
                "sets ISTIO_MUTUAL with subjectAltNames the gateway may not have".to_string()
            }
            Effect::ProxyProtocol => "adds a PROXY protocol header".to_string(),
            Effect::SelectsOthers => {
                "selects other workloads only, so istiod applies no rule (plaintext)".to_string()
            }
        };
        write!(
            f,
            "DestinationRule {rule} (host {host}) takes precedence over lazyxds's for the \
             gateway and {what}: first calls would not reach the gateway over Istio mTLS"
        )
    }
}

/// Whether a rule is one a proxy of its own namespace sees (`setDestinationRules`: no
/// exportTo, `*`, `.` or its namespace; a workloadSelector makes it private).
fn seen_in_own_namespace(rule: &DestinationRule) -> bool {
    rule.workload_selector.is_some()
        || rule.export_to.is_empty()
        || rule
            .export_to
            .iter()
            .any(|e| e == "*" || e == "." || e == &*rule.namespace)
}

/// The rules of `namespace` istiod picks for `host` before any other namespace's (step 1),
/// with their resolved hosts; empty when none matches.
pub fn caller_namespace_rules<'a>(
    index: &'a Index,
    namespace: &str,
    host: &str,
) -> Vec<(&'a DestinationRule, String)> {
    let Some(state) = index.ns(namespace) else {
        return Vec::new();
    };
    let domain = &index.config().cluster_domain;
    let matching: Vec<(&DestinationRule, String)> = state
        .destination_rules
        .values()
        .filter(|r| seen_in_own_namespace(r))
        .map(|r| (r, host::resolve_config_host(&r.host, namespace, domain)))
        .filter(|(_, h)| host::matches(h, host))
        .collect();
    // The exact host, else the longest wildcard (two wildcards covering one host and of
    // one length are the same).
    let best = matching
        .iter()
        .map(|(_, h)| h)
        .max_by_key(|h| (!h.starts_with('*'), h.len()))
        .cloned();
    matching
        .into_iter()
        .filter(|(_, h)| Some(h) == best.as_ref())
        .collect()
}

/// The first rule of `namespace` that would keep a workload with these label sets (its pod
/// template's, its pods') from reaching the gateway (`gateway_host`, `port`) over Istio
/// mTLS; `None` when lazyxds's own rule applies or the rule that does is safe.
pub fn shadowing_gateway(
    index: &Index,
    namespace: &str,
    label_sets: &[&Labels],
    gateway_host: &str,
    port: u16,
) -> Option<Shadow> {
    let winners = caller_namespace_rules(index, namespace, gateway_host);
    let shadow = |(rule, host): &(&DestinationRule, String), effect| Shadow {
        rule: format!("{}/{}", rule.namespace, rule.name),
        host: host.clone(),
        effect,
    };
    let first = winners.first()?;
    for labels in label_sets {
        let selecting: Vec<&(&DestinationRule, String)> = winners
            .iter()
            .filter(|(r, _)| {
                r.workload_selector
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
            .collect();
        let applying = if selecting.is_empty() {
            winners
                .iter()
                .filter(|(r, _)| r.workload_selector.is_none())
                .collect()
        } else {
            selecting
        };
        if applying.is_empty() {
            return Some(shadow(first, Effect::SelectsOthers));
        }
        for winner in applying {
            if let Err(effect) = istio_mutual_on(&winner.0.traffic_policy, port) {
                return Some(shadow(winner, effect));
            }
        }
    }
    None
}

/// Whether a rule's policy gives connections to `port` the Istio mTLS ours gives. A
/// port-level entry replaces the rule's top-level settings and carries no PROXY protocol
/// (`GetPortLevelTrafficPolicy`, `shadowCopyPortTrafficPolicy`:
/// `pilot/pkg/networking/util/util.go`).
pub fn istio_mutual_on(policy: &ConnectionPolicy, port: u16) -> Result<(), Effect> {
    let (tls, port_level) = match policy.port_tls.get(&port) {
        Some(tls) => (tls.as_ref(), true),
        None if policy.proxy_protocol => return Err(Effect::ProxyProtocol),
        None => (policy.tls.as_ref(), false),
    };
    let Some(tls) = tls else {
        return Err(Effect::NoTls { port_level });
    };
    match tls.mode.as_str() {
        "ISTIO_MUTUAL" if tls.subject_alt_names.is_empty() => Ok(()),
        "ISTIO_MUTUAL" => Err(Effect::SubjectAltNames),
        "" => Err(Effect::Mode {
            mode: "DISABLE".to_string(),
            port_level,
        }),
        other => Err(Effect::Mode {
            mode: other.to_string(),
            port_level,
        }),
    }
}

#[cfg(test)]
mod tests;
