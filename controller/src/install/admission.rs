//! What RBAC cannot say: RBAC grants the controller `create`/`patch`/`delete` on every
//! Sidecar of the cluster (it cannot narrow by label), so without more a bug or a
//! compromised controller could rewrite or delete a user's Sidecar. A
//! ValidatingAdmissionPolicy (Kubernetes ≥ 1.30), bound to every namespace, lets the
//! controller's ServiceAccount create, update and delete only objects carrying our label,
//! before and after the change (so it cannot adopt a user's object by relabelling it
//! either): the same test as `lazyxds_index::objects::is_ours`, enforced by the API server.
//! Other users are not affected (`matchConditions` on the request's user).

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use lazyxds_index::objects::{LABEL_MANAGED_BY, MANAGED_BY_US};
use serde_json::Value;

use super::config::{InstallConfig, CONTROLLER_NAME};
use super::{metadata, to_value, InstallError};

/// Name of the policy and of its binding (cluster-scoped).
pub const POLICY: &str = "lazyxds-writes-only-ours";

/// The kinds the policy guards, as (API group, resource): every kind the controller's
/// RBAC lets it write but cannot narrow to our objects. `install::tests` checks that every
/// write RBAC grants is here or in [`NOT_GUARDED`].
pub const GUARDED: &[(&str, &str)] = &[
    ("networking.istio.io", "sidecars"),
    ("networking.istio.io", "virtualservices"),
    ("networking.istio.io", "envoyfilters"),
    ("", "services"),
];

/// Writes RBAC grants that the policy does not guard, and why.
pub const NOT_GUARDED: &[(&str, &str, &str)] = &[
    (
        "events.k8s.io",
        "events",
        "Events are the API server's record of what happened to an object; they carry no \
         owner label, and one about a user's workload is the point",
    ),
    (
        "coordination.k8s.io",
        "leases",
        "in our namespace only; `get`/`patch` by name (the Lease is created unlabelled by \
         the leader-election library)",
    ),
    (
        "",
        "pods",
        "in our namespace only: the leader labels its own pod (the gRPC Service selects it)",
    ),
];

const WRITES: [&str; 3] = ["CREATE", "UPDATE", "DELETE"];

/// CEL: does `var` (`object` or `oldObject`) carry our label?
fn carries_our_label(var: &str) -> String {
    format!(
        "has({var}.metadata.labels) && '{LABEL_MANAGED_BY}' in {var}.metadata.labels && \
         {var}.metadata.labels['{LABEL_MANAGED_BY}'] == '{MANAGED_BY_US}'"
    )
}

/// The controller's username as the API server sees its ServiceAccount token.
pub fn controller_username(config: &InstallConfig) -> String {
    format!(
        "system:serviceaccount:{}:{CONTROLLER_NAME}",
        config.namespace
    )
}

pub(super) fn objects(config: &InstallConfig) -> Result<Vec<Value>, InstallError> {
    let groups: std::collections::BTreeSet<&str> = GUARDED.iter().map(|(g, _)| *g).collect();
    let resource_rules = groups
        .into_iter()
        .map(|group| NamedRuleWithOperations {
            api_groups: Some(vec![group.to_string()]),
            api_versions: Some(vec!["*".into()]),
            resources: Some(
                GUARDED
                    .iter()
                    .filter(|(g, _)| *g == group)
                    .map(|(_, r)| r.to_string())
                    .collect(),
            ),
            operations: Some(WRITES.iter().map(|s| s.to_string()).collect()),
            scope: Some("Namespaced".into()),
            ..NamedRuleWithOperations::default()
        })
        .collect();
    let refused = |which: &str| {
        format!(
            "'lazyxds may ' + request.operation + ' only objects labelled \
             {LABEL_MANAGED_BY}={MANAGED_BY_US}: ' + request.resource.resource + ' ' + \
             request.namespace + '/' + request.name + ' {which}'"
        )
    };
    let policy = ValidatingAdmissionPolicy {
        metadata: metadata(config, POLICY, false, "controller"),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(resource_rules),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "the-lazyxds-controller".into(),
                expression: format!(
                    "request.userInfo.username == '{}'",
                    controller_username(config)
                ),
            }]),
            validations: Some(vec![
                // A DELETE has no new object; a CREATE no old one.
                Validation {
                    expression: format!(
                        "request.operation == 'DELETE' || ({})",
                        carries_our_label("object")
                    ),
                    message_expression: Some(refused("would not carry it")),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
                Validation {
                    expression: format!(
                        "request.operation == 'CREATE' || ({})",
                        carries_our_label("oldObject")
                    ),
                    message_expression: Some(refused("does not carry it")),
                    reason: Some("Forbidden".into()),
                    ..Validation::default()
                },
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        ..ValidatingAdmissionPolicy::default()
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: metadata(config, POLICY, false, "controller"),
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: POLICY.into(),
            validation_actions: vec!["Deny".into()],
            ..ValidatingAdmissionPolicyBindingSpec::default()
        },
    };
    Ok(vec![
        to_value("ValidatingAdmissionPolicy", &policy)?,
        to_value("ValidatingAdmissionPolicyBinding", &binding)?,
    ])
}
