//! What istiod would give the lazy gateway's Envoy from the objects lazyxds renders (its
//! Gateway, VirtualServices and EnvoyFilter), for the subset of Istio those use:
//!
//! - one virtual host per VirtualService host, domains = the host; the route
//!   configuration ignores ports in host matching, as Istio's gateway RDS does;
//! - one Envoy route per `http[].match[]` entry (one for a route without `match`), in
//!   order: `uri`/`authority`/`headers` conditions, then `route` (a cluster, or weighted
//!   clusters), `directResponse`, `timeout`, `rewrite`, `mirror`;
//! - clusters named `outbound|<port>|<subset>|<host>`;
//! - the EnvoyFilter's patches: the added cluster, HTTP filter (before the router) and
//!   virtual host.
//!
//! Anything else is an error, so a field lazyxds starts rendering cannot be silently
//! dropped here.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// The gateway's routing, as Envoy configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayRoutes {
    pub virtual_hosts: Vec<Value>,
    /// Every `outbound|…` cluster a route sends to.
    pub clusters: BTreeSet<String>,
    /// Clusters the EnvoyFilter adds.
    pub extra_clusters: Vec<Value>,
    /// HTTP filters the EnvoyFilter inserts before the router.
    pub extra_http_filters: Vec<Value>,
}

/// Translates rendered objects (any kinds; Services, Gateways and DestinationRules add no
/// routes) bound to the gateway.
pub fn gateway_routes(objects: &[Value]) -> Result<GatewayRoutes> {
    let mut out = GatewayRoutes::default();
    for object in objects {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match object["kind"].as_str() {
            Some("VirtualService") => virtual_service(&object["spec"], &mut out)
                .with_context(|| format!("VirtualService {name}"))?,
            Some("EnvoyFilter") => envoy_filter(&object["spec"], &mut out)
                .with_context(|| format!("EnvoyFilter {name}"))?,
            _ => {}
        }
    }
    Ok(out)
}

fn envoy_filter(spec: &Value, out: &mut GatewayRoutes) -> Result<()> {
    for patch in spec["configPatches"].as_array().into_iter().flatten() {
        let value = patch["patch"]["value"].clone();
        match (
            patch["applyTo"].as_str(),
            patch["patch"]["operation"].as_str(),
        ) {
            (Some("CLUSTER"), Some("ADD")) => out.extra_clusters.push(value),
            (Some("VIRTUAL_HOST"), Some("ADD")) => out.virtual_hosts.push(value),
            (Some("HTTP_FILTER"), Some("INSERT_BEFORE"))
                if patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                    == "envoy.filters.http.router" =>
            {
                out.extra_http_filters.push(value)
            }
            other => bail!("unsupported patch {other:?}"),
        }
    }
    Ok(())
}

fn virtual_service(spec: &Value, out: &mut GatewayRoutes) -> Result<()> {
    let mut routes = Vec::new();
    for (i, http) in spec["http"].as_array().into_iter().flatten().enumerate() {
        http_route(http, &mut routes, &mut out.clusters).with_context(|| format!("http[{i}]"))?;
    }
    for host in spec["hosts"].as_array().into_iter().flatten() {
        let host = host.as_str().context("a host is not a string")?;
        out.virtual_hosts.push(json!({
            "name": host,
            "domains": [host],
            "routes": routes,
        }));
    }
    Ok(())
}

fn http_route(
    http: &Value,
    routes: &mut Vec<Value>,
    clusters: &mut BTreeSet<String>,
) -> Result<()> {
    let http = http.as_object().context("not an object")?;
    for key in http.keys() {
        if !matches!(
            key.as_str(),
            "name" | "match" | "route" | "directResponse" | "timeout" | "rewrite" | "mirror"
        ) {
            bail!("unsupported field {key}");
        }
    }
    let mut action = Map::new();
    if let Some(direct) = http.get("directResponse") {
        action.insert(
            "direct_response".into(),
            json!({
                "status": direct["status"],
                "body": {"inline_string": direct["body"]["string"].as_str().unwrap_or_default()},
            }),
        );
    } else {
        let dests = http
            .get("route")
            .and_then(Value::as_array)
            .context("neither route nor directResponse")?;
        let mut route = Map::new();
        let weighted: Vec<Value> = dests
            .iter()
            .map(|d| {
                let name = cluster(&d["destination"])?;
                clusters.insert(name.clone());
                Ok(json!({"name": name, "weight": d["weight"].as_u64().unwrap_or(100)}))
            })
            .collect::<Result<_>>()?;
        match weighted.as_slice() {
            [one] => {
                route.insert("cluster".into(), one["name"].clone());
            }
            _ => {
                route.insert("weighted_clusters".into(), json!({"clusters": weighted}));
            }
        }
        // istiod sets both on every route: no timeout unless the VirtualService has one,
        // and its default retry policy (checked against istiod in tests/tests/cluster.rs).
        route.insert(
            "timeout".into(),
            http.get("timeout").cloned().unwrap_or_else(|| json!("0s")),
        );
        route.insert("retry_policy".into(), default_retry_policy());
        if let Some(rewrite) = http.get("rewrite") {
            if let Some(uri) = rewrite.get("uri") {
                route.insert("prefix_rewrite".into(), uri.clone());
            }
            if let Some(authority) = rewrite.get("authority") {
                route.insert("host_rewrite_literal".into(), authority.clone());
            }
        }
        if let Some(mirror) = http.get("mirror") {
            let name = cluster(mirror)?;
            clusters.insert(name.clone());
            route.insert("request_mirror_policies".into(), json!([{"cluster": name}]));
        }
        action.insert("route".into(), Value::Object(route));
    }
    let name = http.get("name").cloned().unwrap_or(Value::Null);
    let no_match = [json!({})];
    let matches = match http.get("match").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m.as_slice(),
        _ => &no_match,
    };
    for m in matches {
        let mut route = action.clone();
        route.insert("match".into(), route_match(m)?);
        if name.is_string() {
            route.insert("name".into(), name.clone());
        }
        routes.push(Value::Object(route));
    }
    Ok(())
}

/// The retry policy istiod gives a route whose VirtualService sets no `retries`
/// (`pilot/pkg/networking/core/route/retry`: 2 attempts, on connection-level failures).
pub fn default_retry_policy() -> Value {
    json!({
        "num_retries": 2,
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }],
        "host_selection_retry_max_attempts": "5",
    })
}

/// `outbound|<port>|<subset>|<host>` of a destination.
fn cluster(destination: &Value) -> Result<String> {
    let host = destination["host"]
        .as_str()
        .context("destination without host")?;
    let port = destination["port"]["number"]
        .as_u64()
        .with_context(|| format!("destination {host} without port"))?;
    let subset = destination["subset"].as_str().unwrap_or_default();
    Ok(format!("outbound|{port}|{subset}|{host}"))
}

fn string_match(m: &Value) -> Result<Value> {
    let m = m.as_object().context("a string match is not an object")?;
    match m.iter().next().map(|(k, v)| (k.as_str(), v)) {
        Some((kind @ ("exact" | "prefix"), v)) if m.len() == 1 => Ok(json!({ kind: v })),
        Some(("regex", v)) if m.len() == 1 => Ok(json!({"safe_regex": {"regex": v}})),
        _ => bail!("unsupported string match {m:?}"),
    }
}

fn route_match(m: &Value) -> Result<Value> {
    let m = m.as_object().context("a match is not an object")?;
    let mut out = Map::new();
    let mut headers = Vec::new();
    for (key, value) in m {
        match key.as_str() {
            "uri" => {
                let sm = string_match(value)?;
                let (kind, v) = sm
                    .as_object()
                    .and_then(|o| o.iter().next())
                    .context("empty uri match")?;
                let field = match kind.as_str() {
                    "exact" => "path",
                    "prefix" => "prefix",
                    _ => "safe_regex",
                };
                out.insert(field.into(), v.clone());
            }
            "authority" => {
                headers.push(json!({"name": ":authority", "string_match": string_match(value)?}))
            }
            "headers" => {
                for (name, sm) in value.as_object().context("headers is not an object")? {
                    headers.push(json!({"name": name, "string_match": string_match(sm)?}));
                }
            }
            other => bail!("unsupported match condition {other}"),
        }
    }
    if !out.contains_key("path") && !out.contains_key("safe_regex") {
        out.entry("prefix").or_insert_with(|| json!("/"));
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Array(headers));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_a_reproduced_user_route_and_the_catch_all() {
        let objects = vec![
            json!({"kind": "Service", "metadata": {"name": "placeholder"}}),
            json!({"kind": "VirtualService", "metadata": {"name": "r"}, "spec": {
                "hosts": ["reviews.shop.svc.cluster.local"],
                "http": [
                    {
                        "name": "canary:9080",
                        "match": [{"headers": {"x-canary": {"exact": "1"}},
                                   "authority": {"exact": "reviews.shop.svc.cluster.local:9080"}}],
                        "route": [{"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v3", "port": {"number": 9080}}}],
                    },
                    {
                        "name": "main:9080",
                        "match": [{"authority": {"exact": "reviews.shop.svc.cluster.local:9080"}}],
                        "route": [
                            {"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v1", "port": {"number": 9080}}, "weight": 90},
                            {"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v2", "port": {"number": 9080}}, "weight": 10},
                        ],
                        "timeout": "2s",
                        "rewrite": {"uri": "/v1"},
                    },
                ],
            }}),
            json!({"kind": "VirtualService", "metadata": {"name": "u"}, "spec": {
                "hosts": ["*.svc.cluster.local"],
                "http": [{"name": "unknown", "directResponse": {"status": 404, "body": {"string": "no\n"}}}],
            }}),
            json!({"kind": "EnvoyFilter", "metadata": {"name": "e"}, "spec": {"configPatches": [
                {"applyTo": "VIRTUAL_HOST", "patch": {"operation": "ADD", "value": {"name": "x"}}},
            ]}}),
        ];
        let routes = gateway_routes(&objects).unwrap();
        let authority = json!({"name": ":authority", "string_match": {"exact": "reviews.shop.svc.cluster.local:9080"}});
        assert_eq!(
            routes.virtual_hosts,
            vec![
                json!({
                    "name": "reviews.shop.svc.cluster.local",
                    "domains": ["reviews.shop.svc.cluster.local"],
                    "routes": [
                        {
                            "name": "canary:9080",
                            "match": {"prefix": "/", "headers": [
                                authority,
                                {"name": "x-canary", "string_match": {"exact": "1"}},
                            ]},
                            "route": {
                                "cluster": "outbound|9080|v3|reviews.shop.svc.cluster.local",
                                "timeout": "0s",
                                "retry_policy": default_retry_policy(),
                            },
                        },
                        {
                            "name": "main:9080",
                            "match": {"prefix": "/", "headers": [authority]},
                            "route": {
                                "weighted_clusters": {"clusters": [
                                    {"name": "outbound|9080|v1|reviews.shop.svc.cluster.local", "weight": 90},
                                    {"name": "outbound|9080|v2|reviews.shop.svc.cluster.local", "weight": 10},
                                ]},
                                "timeout": "2s",
                                "retry_policy": default_retry_policy(),
                                "prefix_rewrite": "/v1",
                            },
                        },
                    ],
                }),
                json!({
                    "name": "*.svc.cluster.local",
                    "domains": ["*.svc.cluster.local"],
                    "routes": [{
                        "name": "unknown",
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 404, "body": {"inline_string": "no\n"}},
                    }],
                }),
                json!({"name": "x"}),
            ]
        );
        assert_eq!(routes.clusters.len(), 3);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let vs = |http: Value| {
            vec![
                json!({"kind": "VirtualService", "metadata": {"name": "v"}, "spec": {"hosts": ["h"], "http": [http]}}),
            ]
        };
        for http in [
            json!({"fault": {}, "route": []}),
            json!({"match": [{"sourceLabels": {}}], "route": [{"destination": {"host": "h", "port": {"number": 1}}}]}),
            json!({"route": [{"destination": {"host": "h"}}]}),
            json!({"name": "no action"}),
        ] {
            assert!(gateway_routes(&vs(http.clone())).is_err(), "{http}");
        }
    }
}
