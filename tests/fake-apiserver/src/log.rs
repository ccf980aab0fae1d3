//! The request log, request matchers and the faults tests can inject.

use std::fmt;
use std::time::Duration;

/// What a request does, as the API server's authorizer classifies it (plus `Apply`, which
/// RBAC sees as `patch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    /// A JSON merge, strategic merge or JSON patch.
    Patch,
    /// A server-side apply (`PATCH` with `application/apply-patch+yaml`).
    Apply,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The RBAC verb (`Apply` is authorized as `patch`; one that creates the object also
    /// as `create`: [`RequestRecord::rbac_verbs`]).
    pub fn rbac(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch | Verb::Apply => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    /// True for verbs that change state.
    pub fn is_write(self) -> bool {
        !matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Apply => "apply",
            v => v.rbac(),
        })
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Arrival order, from 0.
    pub seq: u64,
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`), empty when none.
    pub query: String,
    pub verb: Verb,
    /// API group (`""` for core).
    pub group: String,
    pub version: String,
    /// The resource plural; `None` for non-resource URLs (discovery, `/version`, …).
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `fieldManager=` from the query.
    pub field_manager: Option<String>,
    /// `dryRun=All`: validated and answered, nothing stored.
    pub dry_run: bool,
    /// The response's HTTP status. For a watch that started too far back this is 410 (the
    /// HTTP status was 200 and the stream carried one ERROR event, as the real server does).
    pub code: u16,
    /// The response was an injected fault.
    pub injected: bool,
}

impl RequestRecord {
    /// A query parameter (decoded), e.g. `resourceVersion`, `labelSelector`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// The RBAC verbs the real API server authorizes this request with: a server-side
    /// apply is a `patch`, and when it creates the object (201) also a `create`.
    pub fn rbac_verbs(&self) -> Vec<&'static str> {
        match (self.verb, self.code) {
            (Verb::Apply, 201) => vec!["patch", "create"],
            (v, _) => vec![v.rbac()],
        }
    }

    /// `resource` or `resource/subresource`, as RBAC names it.
    pub fn rbac_resource(&self) -> Option<String> {
        let r = self.resource.as_ref()?;
        Some(match &self.subresource {
            Some(s) => format!("{r}/{s}"),
            None => r.clone(),
        })
    }
}

/// Selects requests (for faults, latency, the log and open watches). Unset fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    verbs: Vec<Verb>,
    group: Option<String>,
    resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    field_manager: Option<String>,
}

impl RequestMatch {
    /// Matches every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Also match this verb (several calls: any of them).
    pub fn verb(mut self, v: Verb) -> Self {
        self.verbs.push(v);
        self
    }

    pub fn group(mut self, g: &str) -> Self {
        self.group = Some(g.into());
        self
    }

    /// The resource plural (`pods`), or `plural/subresource` (`sidecars/status`).
    pub fn resource(mut self, r: &str) -> Self {
        self.resource = Some(r.into());
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    pub fn name(mut self, n: &str) -> Self {
        self.name = Some(n.into());
        self
    }

    pub fn field_manager(mut self, m: &str) -> Self {
        self.field_manager = Some(m.into());
        self
    }

    pub fn matches(&self, r: &RequestRecord) -> bool {
        (self.verbs.is_empty() || self.verbs.contains(&r.verb))
            && self.group.as_ref().is_none_or(|g| *g == r.group)
            && self.resource.as_ref().is_none_or(|want| {
                if want.contains('/') {
                    r.rbac_resource().as_ref() == Some(want)
                } else {
                    r.resource.as_ref() == Some(want)
                }
            })
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| r.namespace.as_ref() == Some(n))
            && self
                .name
                .as_ref()
                .is_none_or(|n| r.name.as_ref() == Some(n))
            && self
                .field_manager
                .as_ref()
                .is_none_or(|m| r.field_manager.as_ref() == Some(m))
    }
}

/// An injected failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 409 Conflict ("the object has been modified").
    Conflict,
    /// 429 TooManyRequests with `Retry-After` (kube's client retries these itself).
    TooManyRequests { retry_after_secs: u64 },
    /// 500 InternalError.
    InternalError,
    /// 503 ServiceUnavailable (kube's client retries these itself).
    ServiceUnavailable,
    /// 410 Gone / Expired.
    Gone,
    /// Any status.
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// Close the connection without answering.
    CloseConnection,
    /// A LIST answered 200 with no items: a truncated list, as a misbehaving server or
    /// proxy might return, which a real API server cannot be made to do.
    EmptyList,
}

#[derive(Debug)]
pub(crate) struct FaultRule {
    pub(crate) matcher: RequestMatch,
    pub(crate) remaining: usize,
    pub(crate) failure: Failure,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) rules: Vec<FaultRule>,
    pub(crate) latency: Vec<(RequestMatch, Duration)>,
}

impl Faults {
    /// The failure for this request, consuming one use of the first matching rule.
    pub(crate) fn take(&mut self, r: &RequestRecord) -> Option<Failure> {
        let rule = self
            .rules
            .iter_mut()
            .find(|f| f.remaining > 0 && f.matcher.matches(r))?;
        rule.remaining -= 1;
        let failure = rule.failure.clone();
        self.rules.retain(|f| f.remaining > 0);
        Some(failure)
    }

    /// The summed latency of the matching rules.
    pub(crate) fn latency(&self, r: &RequestRecord) -> Duration {
        self.latency
            .iter()
            .filter(|(m, _)| m.matches(r))
            .map(|(_, d)| *d)
            .sum()
    }
}
