//! The watched kinds that come by the hundred thousand (pods, ReplicaSets, Jobs and the
//! workload kinds), read with only the fields [`super::project`] uses. The rest of each
//! object (containers, volumes, status conditions, `managedFields`, annotations not ours)
//! is skipped while parsing, never allocated: a full `k8s_openapi` Pod is kilobytes of
//! short-lived strings and maps per object, and a start lists 100k of them around the
//! index's long-lived entries, leaving the allocator's pages partly used (bench P7).
//!
//! Each type implements `kube::Resource` with its Kubernetes kind's names, so a watcher
//! serves it as it serves the generated type. Pure: no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Annotations kept: ours. The others (Istio's injection status alone is ~400 bytes a
/// pod) are skipped.
const KEPT_ANNOTATIONS: &str = "lazyxds.io/";

/// A Pod: its metadata, service account, host network, IPs and start time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    #[serde(deserialize_with = "object_meta")]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub host_network: Option<bool>,
    pub service_account_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIp>>,
    pub start_time: Option<Time>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodIp {
    pub ip: String,
}

/// An object of kind `K` of which only the metadata is used (ReplicaSets, Jobs: their
/// owners).
#[derive(Debug, Deserialize)]
pub struct MetaOnly<K> {
    #[serde(default, deserialize_with = "object_meta")]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

/// A workload of kind `K`: its metadata and its pod template's (`spec.template`, or a
/// CronJob's `spec.jobTemplate.spec.template`).
#[derive(Debug, Deserialize)]
pub struct Templated<K> {
    #[serde(default, deserialize_with = "object_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<WorkloadSpec>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WorkloadSpec {
    template: Option<PodTemplate>,
    job_template: Option<JobTemplate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct JobTemplate {
    spec: Option<JobSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct JobSpec {
    template: Option<PodTemplate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct PodTemplate {
    #[serde(deserialize_with = "object_meta")]
    metadata: ObjectMeta,
}

impl<K> Templated<K> {
    /// The pod template's metadata, if the object has a template.
    pub fn template_meta(&self) -> Option<&ObjectMeta> {
        let spec = self.spec.as_ref()?;
        let template = match &spec.template {
            Some(t) => t,
            None => spec
                .job_template
                .as_ref()?
                .spec
                .as_ref()?
                .template
                .as_ref()?,
        };
        Some(&template.metadata)
    }
}

// By hand: a derive would ask `K: Clone`/`Default` of the marker type.
impl<K> Clone for MetaOnly<K> {
    fn clone(&self) -> Self {
        MetaOnly {
            metadata: self.metadata.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Clone for Templated<K> {
    fn clone(&self) -> Self {
        Templated {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            kind: PhantomData,
        }
    }
}

/// What `ObjectMeta` keeps here: names, the resource version (the watcher resumes from
/// it), uid, labels, our annotations, owners.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct MetaFields {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(deserialize_with = "our_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

fn object_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Option::<MetaFields>::deserialize(d)?.unwrap_or_default();
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        owner_references: m.owner_references,
        ..ObjectMeta::default()
    })
}

/// The `lazyxds.io/` entries of an annotations map; the other values are skipped unread.
fn our_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Ours;
    impl<'de> Visitor<'de> for Ours {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key.starts_with(KEPT_ANNOTATIONS) {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_any(Ours)
}

/// `kube::Resource` for a slim type: the names of the generated type `$k8s`.
macro_rules! resource {
    ($slim:ty, $k8s:ty $(, $param:ident)?) => {
        impl$(<$param: k8s_openapi::Resource>)? kube::Resource for $slim {
            type DynamicType = ();
            type Scope = <$k8s as k8s_openapi::Resource>::Scope;
            fn kind(_: &()) -> Cow<'_, str> {
                <$k8s as k8s_openapi::Resource>::KIND.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$k8s as k8s_openapi::Resource>::GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$k8s as k8s_openapi::Resource>::VERSION.into()
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                <$k8s as k8s_openapi::Resource>::API_VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$k8s as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource!(Pod, k8s_openapi::api::core::v1::Pod);
resource!(MetaOnly<K>, K, K);
resource!(Templated<K>, K, K);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::batch::v1::CronJob;
    use kube::Resource;
    use serde_json::json;

    #[test]
    fn metadata_keeps_names_version_labels_owners_and_only_our_annotations() {
        let rs: MetaOnly<ReplicaSet> = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d9", "namespace": "shop", "uid": "u1",
                "resourceVersion": "42", "generation": 3,
                "labels": {"app": "web"},
                "annotations": {"deployment.kubernetes.io/revision": "2",
                    "lazyxds.io/enabled": "true", "lazyxds.io/pin": "shop/db",
                    "sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "web", "uid": "u0", "controller": true}],
                "managedFields": [{"manager": "kube-controller-manager",
                    "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app"}]}}},
            "status": {"replicas": 2}
        }))
        .unwrap();
        let m = &rs.metadata;
        assert_eq!(m.name.as_deref(), Some("web-5d9"));
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.uid.as_deref(), Some("u1"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.labels, Some([("app".into(), "web".into())].into()));
        assert_eq!(
            m.annotations,
            Some(
                [
                    ("lazyxds.io/enabled".into(), "true".into()),
                    ("lazyxds.io/pin".into(), "shop/db".into())
                ]
                .into()
            )
        );
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(m.managed_fields, None);
        assert_eq!(m.generation, None);
    }

    #[test]
    fn absent_and_null_fields_read_as_absent() {
        for metadata in [
            json!(null),
            json!({}),
            json!({"annotations": null, "labels": null}),
        ] {
            let pod: Pod = serde_json::from_value(json!({"metadata": metadata,
                "spec": null, "status": {"podIPs": null}}))
            .unwrap();
            assert_eq!(pod.metadata.annotations, None);
            assert_eq!(pod.metadata.labels, None);
            assert!(pod.spec.is_none());
            assert!(pod.status.unwrap().pod_ips.is_none());
        }
        let pod: Pod = serde_json::from_value(json!({})).unwrap();
        assert_eq!(pod.metadata.name, None);
    }

    #[test]
    fn a_malformed_object_is_an_error_naming_the_field() {
        let err = serde_json::from_value::<Pod>(json!({"metadata": {"labels": {"app": 1}}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("string"), "{err}");
        let err = serde_json::from_value::<Pod>(json!({"metadata": {"annotations": [1]}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("map of annotations"), "{err}");
    }

    #[test]
    fn workloads_find_their_pod_template() {
        let d: Templated<Deployment> = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"},
                    "annotations": {"lazyxds.io/enabled": "false", "other": "x"}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]}}}
        }))
        .unwrap();
        let t = d.template_meta().unwrap();
        assert_eq!(t.labels, Some([("app".into(), "web".into())].into()));
        assert_eq!(
            t.annotations,
            Some([("lazyxds.io/enabled".into(), "false".into())].into())
        );
        let c: Templated<CronJob> = serde_json::from_value(json!({
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"job": "nightly"}}, "spec": {"containers": []}}}}}
        }))
        .unwrap();
        let t = c.template_meta().unwrap();
        assert_eq!(t.labels, Some([("job".into(), "nightly".into())].into()));
        let bare: Templated<Deployment> =
            serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(bare.template_meta().is_none());
    }

    #[test]
    fn each_type_names_its_kubernetes_kind() {
        fn names<R: Resource<DynamicType = ()>>() -> String {
            let (kind, group) = (R::kind(&()), R::group(&()));
            let (version, plural) = (R::version(&()), R::plural(&()));
            format!(
                "{group}/{version} {kind} {plural} ({})",
                R::api_version(&())
            )
        }
        assert_eq!(names::<Pod>(), "/v1 Pod pods (v1)");
        assert_eq!(
            names::<MetaOnly<ReplicaSet>>(),
            "apps/v1 ReplicaSet replicasets (apps/v1)"
        );
        assert_eq!(
            names::<Templated<CronJob>>(),
            "batch/v1 CronJob cronjobs (batch/v1)"
        );
    }
}
