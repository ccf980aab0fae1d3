//! What scoping buys, per workload: hosts, clusters and endpoints a sidecar no longer gets.
//!
//! Estimates: a cluster per service (or ServiceEntry host) port; DestinationRule subsets
//! are not modelled. Endpoints: pods a Service's selector selects × its ports;
//! ServiceEntry endpoints are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::desired::{self, Desired, RenderConfig};
use crate::host;
use crate::index::Index;
use crate::objects::WorkloadId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub workloads: Vec<WorkloadReport>,
    pub totals: Totals,
    /// Hosts every scoped Sidecar they are exported to keeps, learned or not, and why.
    pub always_visible: Vec<AlwaysVisibleHost>,
}

/// A host that can never be lazy ([`desired::always_visible`]), with every reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlwaysVisibleHost {
    /// `ns/host`, as Sidecars list it.
    pub host: String,
    /// Every reason, `; `-separated.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadReport {
    pub workload: WorkloadId,
    /// `"status": "scoped" | "refused" | "not_opted_in"`, with `"reason"` when refused.
    #[serde(flatten)]
    pub status: Status,
    /// Service and ServiceEntry hosts exported to its namespace (no Sidecar at all).
    pub hosts_without: usize,
    /// Of those, the ones its Sidecar still imports.
    pub hosts_with: usize,
    pub clusters_removed: usize,
    pub endpoints_removed: usize,
    /// Scoped, and its learned hosts reached this cap: new ones stay lazy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_cap_reached: Option<usize>,
    /// Scoped: the hosts its Sidecar keeps whether learned or not (`ns/host`), each with
    /// every reason (the report's `always_visible` list, as this workload sees it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub always_visible: Vec<AlwaysVisibleHost>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Scoped,
    Refused { reason: String },
    NotOptedIn,
}

impl Status {
    fn label(&self) -> String {
        match self {
            Status::Scoped => "scoped".to_string(),
            Status::Refused { reason } => format!("refused: {reason}"),
            Status::NotOptedIn => "not opted in".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub workloads: usize,
    pub scoped: usize,
    pub refused: usize,
    pub not_opted_in: usize,
    pub hosts_without: usize,
    pub hosts_with: usize,
    pub clusters_removed: usize,
    pub endpoints_removed: usize,
}

/// A host a sidecar may import.
#[derive(Debug)]
struct Entry<'a> {
    namespace: &'a str,
    host: String,
    export_to: &'a [String],
    clusters: usize,
    endpoints: usize,
}

/// Every Service/ServiceEntry host, and mesh VirtualServices (they import their
/// destinations).
struct Catalog<'a> {
    entries: Vec<Entry<'a>>,
    by_host: BTreeMap<String, Vec<usize>>,
    /// (namespace, resolved host, exportTo, resolved destinations).
    virtual_services: Vec<(&'a str, String, &'a [String], Vec<String>)>,
}

impl<'a> Catalog<'a> {
    fn new(index: &'a Index) -> Self {
        let domain = &index.config().cluster_domain;
        let mut entries = Vec::new();
        let mut virtual_services = Vec::new();
        // What istiod shows proxies: nothing of a namespace it does not watch, each object
        // where its exportTo (or the mesh's default) says.
        for ns in index.namespace_names() {
            let Some(state) = index.ns(ns).filter(|_| index.is_discovered(ns)) else {
                continue;
            };
            for svc in state.services.values() {
                let pods = match &svc.selector {
                    Some(selector) if !selector.is_empty() => state
                        .pods
                        .values()
                        .filter(|p| !p.ips.is_empty())
                        .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                        .count(),
                    _ => 0,
                };
                entries.push(Entry {
                    namespace: ns,
                    host: svc.host(domain),
                    export_to: index.service_export_to(&svc.export_to),
                    clusters: svc.ports.len(),
                    endpoints: pods.saturating_mul(svc.ports.len()),
                });
            }
            for se in state.service_entries.values() {
                for h in &se.hosts {
                    entries.push(Entry {
                        namespace: ns,
                        host: host::resolve_config_host(h, ns, domain),
                        export_to: index.service_export_to(&se.export_to),
                        clusters: se.ports.len(),
                        endpoints: 0,
                    });
                }
            }
            for vs in state
                .virtual_services
                .values()
                .filter(|v| v.applies_to_mesh())
            {
                let destinations: Vec<String> = vs
                    .destinations
                    .iter()
                    .map(|d| host::resolve_config_host(d, ns, domain))
                    .collect();
                for h in &vs.hosts {
                    virtual_services.push((
                        &**ns,
                        host::resolve_config_host(h, ns, domain),
                        index.virtual_service_export_to(&vs.export_to),
                        destinations.clone(),
                    ));
                }
            }
        }
        let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_host.entry(e.host.clone()).or_default().push(i);
        }
        Catalog {
            entries,
            by_host,
            virtual_services,
        }
    }

    fn visible_from(&self, ns: &str) -> BTreeSet<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| host::exported_to(e.export_to, e.namespace, ns))
            .map(|(i, _)| i)
            .collect()
    }

    /// Entries an egress host list imports for a workload in `ns`, among `visible`.
    fn imported(&self, ns: &str, egress: &[String], visible: &BTreeSet<usize>) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut destinations = Vec::new();
        for pattern in egress {
            let Some((ns_pattern, host_pattern)) = pattern.split_once('/') else {
                continue;
            };
            let ns_ok = |owner: &str| match ns_pattern {
                "*" => true,
                "." => owner == ns,
                "~" => false,
                exact => owner == exact,
            };
            let candidates: Vec<usize> = if host_pattern.contains('*') {
                self.entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| host::matches(host_pattern, &e.host))
                    .map(|(i, _)| i)
                    .collect()
            } else {
                self.by_host.get(host_pattern).cloned().unwrap_or_default()
            };
            out.extend(candidates.into_iter().filter(|i| {
                visible.contains(i) && self.entries.get(*i).is_some_and(|e| ns_ok(e.namespace))
            }));
            for (vs_ns, vs_host, export_to, dests) in &self.virtual_services {
                if ns_ok(vs_ns)
                    && host::matches(host_pattern, vs_host)
                    && host::exported_to(export_to, vs_ns, ns)
                {
                    destinations.extend(dests.iter().cloned());
                }
            }
        }
        for dest in destinations {
            if let Some(ids) = self.by_host.get(dest.as_str()) {
                out.extend(ids.iter().filter(|i| visible.contains(i)));
            }
        }
        out
    }
}

/// Per-workload and total effect of `desired` (rendered with `config`) on what sidecars
/// receive.
pub fn report(index: &Index, desired: &Desired, config: &RenderConfig) -> Report {
    let catalog = Catalog::new(index);
    let refusals: BTreeMap<&WorkloadId, String> = desired
        .refusals
        .iter()
        .map(|r| (&r.workload, r.reason.to_string()))
        .collect();
    let capped: BTreeMap<&WorkloadId, usize> = desired
        .capped
        .iter()
        .map(|c| (&c.workload, c.cap))
        .collect();
    let kept = desired::always_visible(index, config);
    let mut visible_by_ns: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut workloads = Vec::new();
    let mut totals = Totals::default();
    for id in index.workload_views().into_keys() {
        let ns = &*id.namespace;
        let visible = visible_by_ns
            .entry(ns.to_string())
            .or_insert_with(|| catalog.visible_from(ns));
        let hosts_without = visible.len();
        let (status, imported) = match (desired.sidecar_of(&id), refusals.get(&id)) {
            (Some(sidecar), _) => {
                let egress: Vec<String> = sidecar
                    .spec
                    .egress
                    .iter()
                    .flat_map(|l| l.hosts.iter().cloned())
                    .collect();
                (Status::Scoped, catalog.imported(ns, &egress, visible))
            }
            (None, Some(reason)) => (
                Status::Refused {
                    reason: reason.clone(),
                },
                visible.clone(),
            ),
            (None, None) => (Status::NotOptedIn, visible.clone()),
        };
        let removed = visible.difference(&imported);
        let (clusters_removed, endpoints_removed) = removed
            .filter_map(|&i| catalog.entries.get(i))
            .fold((0usize, 0usize), |(c, e), entry| {
                (
                    c.saturating_add(entry.clusters),
                    e.saturating_add(entry.endpoints),
                )
            });
        let always_visible = match status {
            Status::Scoped => group_reasons(kept.iter().filter(|a| a.visible_from(ns))),
            _ => Vec::new(),
        };
        let row = WorkloadReport {
            always_visible,
            host_cap_reached: capped.get(&id).copied(),
            workload: id,
            status,
            hosts_without,
            hosts_with: imported.len(),
            clusters_removed,
            endpoints_removed,
        };
        totals.workloads = totals.workloads.saturating_add(1);
        match row.status {
            Status::Scoped => totals.scoped = totals.scoped.saturating_add(1),
            Status::Refused { .. } => totals.refused = totals.refused.saturating_add(1),
            Status::NotOptedIn => totals.not_opted_in = totals.not_opted_in.saturating_add(1),
        }
        totals.hosts_without = totals.hosts_without.saturating_add(row.hosts_without);
        totals.hosts_with = totals.hosts_with.saturating_add(row.hosts_with);
        totals.clusters_removed = totals.clusters_removed.saturating_add(row.clusters_removed);
        totals.endpoints_removed = totals
            .endpoints_removed
            .saturating_add(row.endpoints_removed);
        workloads.push(row);
    }
    let always_visible = always_visible_hosts(index, config);
    Report {
        workloads,
        totals,
        always_visible,
    }
}

/// Every host that can never be lazy ([`desired::always_visible`]), one row per `ns/host`
/// in the order found (a host can be both a Service's and a VirtualService's), each
/// distinct reason once.
pub fn always_visible_hosts(index: &Index, config: &RenderConfig) -> Vec<AlwaysVisibleHost> {
    group_reasons(desired::always_visible(index, config).iter())
}

/// One row per `ns/host`, in the order found, each distinct reason once.
fn group_reasons<'a, 'b: 'a>(
    hosts: impl Iterator<Item = &'a desired::AlwaysVisible<'b>>,
) -> Vec<AlwaysVisibleHost> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row_of: BTreeMap<String, usize> = BTreeMap::new();
    for a in hosts {
        let i = *row_of.entry(a.egress_host.clone()).or_insert_with(|| {
            rows.push((a.egress_host.clone(), Vec::new()));
            rows.len().saturating_sub(1)
        });
        let Some((_, reasons)) = rows.get_mut(i) else {
            continue;
        };
        for why in &a.why {
            let reason = why.to_string();
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
    }
    rows.into_iter()
        .map(|(host, reasons)| AlwaysVisibleHost {
            host,
            reason: reasons.join("; "),
        })
        .collect()
}

impl Report {
    /// An aligned table with a header and a totals line.
    pub fn to_table(&self) -> String {
        let header = [
            "NAMESPACE",
            "WORKLOAD",
            "STATUS",
            "HOSTS",
            "SCOPED HOSTS",
            "CLUSTERS REMOVED",
            "ENDPOINTS REMOVED",
        ];
        let mut rows: Vec<[String; 7]> = self
            .workloads
            .iter()
            .map(|w| {
                [
                    w.workload.namespace.to_string(),
                    format!("{}/{}", w.workload.kind, w.workload.name),
                    match w.host_cap_reached {
                        Some(cap) => format!("{} (host cap {cap} reached)", w.status.label()),
                        None => w.status.label(),
                    },
                    w.hosts_without.to_string(),
                    w.hosts_with.to_string(),
                    w.clusters_removed.to_string(),
                    w.endpoints_removed.to_string(),
                ]
            })
            .collect();
        let t = &self.totals;
        rows.push([
            "TOTAL".to_string(),
            format!("{} workloads", t.workloads),
            format!(
                "{} scoped, {} refused, {} not opted in",
                t.scoped, t.refused, t.not_opted_in
            ),
            t.hosts_without.to_string(),
            t.hosts_with.to_string(),
            t.clusters_removed.to_string(),
            t.endpoints_removed.to_string(),
        ]);
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        let mut line = |cells: [&str; 7]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                // Text columns left-aligned, numbers right-aligned.
                let _ = if i < 3 {
                    write!(text, "{cell:<width$}  ")
                } else {
                    write!(text, "{cell:>width$}  ")
                };
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(header);
        let total = rows.pop();
        for row in &rows {
            line(row.each_ref().map(String::as_str));
        }
        if let Some(total) = total {
            line(total.each_ref().map(String::as_str));
        }
        if !self.always_visible.is_empty() {
            let header = "ALWAYS VISIBLE (in every scoped Sidecar)";
            let width = self
                .always_visible
                .iter()
                .map(|a| a.host.len())
                .chain([header.len()])
                .max()
                .unwrap_or_default();
            let _ = writeln!(out, "\n{header:<width$}  WHY");
            for a in &self.always_visible {
                let _ = writeln!(out, "{:<width$}  {}", a.host, a.reason);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{desired, RenderConfig};
    use crate::fixtures::*;
    use crate::objects::WorkloadKind::Deployment;

    fn mk_row(name: &str, status: Status, counts: [usize; 4]) -> WorkloadReport {
        WorkloadReport {
            workload: mk_id(Deployment, "shop", name),
            status,
            hosts_without: counts[0],
            hosts_with: counts[1],
            clusters_removed: counts[2],
            endpoints_removed: counts[3],
            host_cap_reached: None,
            always_visible: Vec::new(),
        }
    }

    #[test]
    fn a_workload_at_the_host_cap_is_scoped_and_says_so() {
        let mut index = Index::new(crate::IndexConfig {
            max_deps_per_workload: 1,
            ..Default::default()
        });
        index.apply(mk_namespace("shop", Some(true)));
        mk_deployment(&mut index, "shop", "productpage", "10.0.0.10");
        let hosts = ["a.example.com", "b.example.com"];
        index.apply(mk_service_entry("shop", "ext", &hosts, &[(80, "HTTP")]));
        let edges = hosts.map(|h| mk_edge("10.0.0.10", None, &mk_outbound(80, h), 1));
        index.record_edges(edges, 1);
        let desired = desired(&index, &RenderConfig::test());
        let report = report(&index, &desired, &RenderConfig::test());
        let row = &report.workloads[0];
        assert_eq!(
            (&row.status, row.host_cap_reached),
            (&Status::Scoped, Some(1))
        );
        assert!(
            report.to_table().contains("scoped (host cap 1 reached)"),
            "{}",
            report.to_table()
        );
        let json = serde_json::to_value(row).unwrap();
        assert_eq!(json["host_cap_reached"], 1);
    }

    #[test]
    fn counts_what_scoping_removes() {
        let mut index = Index::test();
        index.apply(mk_service(
            "istio-system",
            "istiod",
            &[("app", "istiod")],
            &[
                (15010, "grpc-xds"),
                (15012, "https-dns"),
                (443, "https-webhook"),
            ],
        ));
        let mut vault = mk_service("payments", "vault", &[("app", "vault")], &[(8200, "http")]);
        vault.export_to = vec![".".to_string()];
        index.apply(vault);
        index.apply(mk_user_sidecar(
            "shop",
            "v1-only",
            serde_json::json!({"workloadSelector": {"labels": {"version": "v1"}}}),
        ));
        let v2 = mk_outbound(9080, "reviews-v2.shop.svc.cluster.local");
        index.record_edges([mk_edge("10.0.0.10", Some("reviews"), &v2, 1)], 1);
        let desired = desired(&index, &RenderConfig::test());
        let refused = Status::Refused {
            reason: "user Sidecar v1-only already selects its pods".to_string(),
        };
        // Visible from shop: 5 shop Services, payments, istiod (vault is private).
        // A scoped workload lists what it keeps unlearned as it sees it: postgres, not
        // payments' private vault.
        let postgres = || AlwaysVisibleHost {
            host: "shop/postgres.shop.svc.cluster.local".to_string(),
            reason: "port 5432 (name \"tcp-postgres\") is TCP, not HTTP".to_string(),
        };
        let scoped = |name: &str, counts: [usize; 4]| WorkloadReport {
            always_visible: vec![postgres()],
            ..mk_row(name, Status::Scoped, counts)
        };
        let want = Report {
            workloads: vec![
                // Keeps istiod, postgres, reviews and (through the VirtualService)
                // reviews-v2; drops productpage (1 pod), ratings, payments.
                scoped("productpage", [7, 4, 3, 1]),
                mk_row("reviews-v1", refused, [7, 7, 0, 0]),
                // Drops productpage (1), reviews (2 pods), reviews-v2 (1), ratings, payments.
                scoped("reviews-v2", [7, 2, 5, 4]),
            ],
            totals: Totals {
                workloads: 3,
                scoped: 2,
                refused: 1,
                not_opted_in: 0,
                hosts_without: 21,
                hosts_with: 13,
                clusters_removed: 8,
                endpoints_removed: 5,
            },
            // istiod's https ports count for nothing: `istio-system/*` is in every Sidecar.
            // vault stays where it is seen (payments), hidden from the gateway.
            always_visible: vec![
                AlwaysVisibleHost {
                    host: "payments/vault.payments.svc.cluster.local".to_string(),
                    reason: "Service payments/vault's exportTo [\".\"] leaves out the \
                             gateway's namespace lazyxds-system"
                        .to_string(),
                },
                AlwaysVisibleHost {
                    host: "shop/postgres.shop.svc.cluster.local".to_string(),
                    reason: "port 5432 (name \"tcp-postgres\") is TCP, not HTTP".to_string(),
                },
            ],
        };
        let report = report(&index, &desired, &RenderConfig::test());
        assert_eq!(report, want);
        assert_eq!(
            report.to_table(),
            "\
NAMESPACE  WORKLOAD                STATUS                                                  HOSTS  SCOPED HOSTS  CLUSTERS REMOVED  ENDPOINTS REMOVED
shop       Deployment/productpage  scoped                                                      7             4                 3                  1
shop       Deployment/reviews-v1   refused: user Sidecar v1-only already selects its pods      7             7                 0                  0
shop       Deployment/reviews-v2   scoped                                                      7             2                 5                  4
TOTAL      3 workloads             2 scoped, 1 refused, 0 not opted in                        21            13                 8                  5

ALWAYS VISIBLE (in every scoped Sidecar)   WHY
payments/vault.payments.svc.cluster.local  Service payments/vault's exportTo [\".\"] leaves out the gateway's namespace lazyxds-system
shop/postgres.shop.svc.cluster.local       port 5432 (name \"tcp-postgres\") is TCP, not HTTP
"
        );
    }
}
