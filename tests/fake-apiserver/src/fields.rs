//! Field paths, managed-field bookkeeping and the patch formats (JSON merge patch, JSON patch).
//!
//! Ownership is tracked per leaf: every path that ends in a scalar, a list (lists are atomic,
//! as they are for CRDs without list-type markers) or an empty map. Under `metadata` only
//! `labels`, `annotations` (per key), `finalizers` and `ownerReferences` (atomic) are owned.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

pub(crate) type Path = Vec<String>;

/// Which part of an object a write may touch: the main resource or the `status` subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource: everything but `status`.
    Main,
    /// The `status` subresource: only `status`.
    Status,
    /// Test-side writes: everything.
    All,
}

impl Scope {
    pub(crate) fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Main | Scope::All => None,
            Scope::Status => Some("status"),
        }
    }
}

pub(crate) fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

/// Sets `path` to `x`, creating (or replacing non-map) intermediate values.
pub(crate) fn set(v: &mut Value, path: &[String], x: Value) {
    let Some((last, parents)) = path.split_last() else {
        *v = x;
        return;
    };
    let mut cur = v;
    for k in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("just made an object")
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut()
        .expect("just made an object")
        .insert(last.clone(), x);
}

/// Removes `path`, then any map left empty by it (but never `metadata` itself).
pub(crate) fn remove(v: &mut Value, path: &[String]) {
    fn rec(v: &mut Value, path: &[String], depth: usize) {
        let Some(map) = v.as_object_mut() else { return };
        match path {
            [] => {}
            [last] => {
                map.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = map.get_mut(first) {
                    rec(child, rest, depth + 1);
                    let empty = child.as_object().is_some_and(Map::is_empty);
                    if empty && !(depth == 0 && first == "metadata") {
                        map.remove(first);
                    }
                }
            }
        }
    }
    rec(v, path, 0);
}

/// One path is a prefix of the other (they name the same or nested fields).
pub(crate) fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// `a` names `b` or one of its ancestors.
pub(crate) fn covers(a: &[String], b: &[String]) -> bool {
    b.starts_with(a)
}

/// `.spec.egress`, as the API server prints field paths.
pub(crate) fn display_path(p: &[String]) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// The owned leaf paths of `obj` for a write in `scope`.
pub(crate) fn leaves(obj: &Value, scope: Scope) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => {}
            ("metadata", Scope::Main | Scope::All) => {
                let Some(meta) = v.as_object() else { continue };
                for mk in ["labels", "annotations"] {
                    if let Some(Value::Object(m)) = meta.get(mk) {
                        for (lk, lv) in m {
                            if !lv.is_null() {
                                out.insert(vec!["metadata".into(), mk.into(), lk.clone()]);
                            }
                        }
                    }
                }
                for mk in ["finalizers", "ownerReferences"] {
                    if meta.get(mk).is_some_and(|x| !x.is_null()) {
                        out.insert(vec!["metadata".into(), mk.into()]);
                    }
                }
            }
            ("metadata", Scope::Status) => {}
            ("status", Scope::Main) => {}
            (_, Scope::Status) if k != "status" => {}
            _ => collect(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn collect(v: &Value, prefix: Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Null => {}
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = prefix.clone();
                p.push(k.clone());
                collect(child, p, out);
            }
        }
        _ => {
            out.insert(prefix);
        }
    }
}

/// `{"f:spec":{"f:egress":{}}}` for the given leaf paths.
pub(crate) fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            cur = cur
                .as_object_mut()
                .expect("fieldsV1 nodes are maps")
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

/// The leaf paths named by a `fieldsV1` value (`k:`/`v:` list-item keys make the list a leaf).
pub(crate) fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn rec(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<(&str, &Value)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| k.strip_prefix("f:").map(|k| (k, v)))
                    .collect()
            })
            .unwrap_or_default();
        if children.is_empty() {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (k, child) in children {
            prefix.push(k.to_string());
            rec(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// RFC 7386 JSON merge patch (also used for strategic merge patches).
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn pointer_tokens(ptr: &str) -> Result<Vec<String>, String> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {ptr:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_remove(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    let parent = parents
        .iter()
        .try_fold(doc, |v, k| match v {
            Value::Object(m) => m.get_mut(k),
            Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        })
        .ok_or_else(|| format!("path {} not found", tokens.join("/")))?;
    match parent {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {} not found", tokens.join("/"))),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index {i} out of range"))
            }
        }
        _ => Err(format!("path {} not found", tokens.join("/"))),
    }
}

fn pointer_add(doc: &mut Value, tokens: &[String], x: Value, replace: bool) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        *doc = x;
        return Ok(());
    };
    let parent = parents
        .iter()
        .try_fold(doc, |v, k| match v {
            Value::Object(m) => m.get_mut(k),
            Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        })
        .ok_or_else(|| format!("path {} not found", tokens.join("/")))?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(format!("path {} not found", tokens.join("/")));
            }
            m.insert(last.clone(), x);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("bad index {last}"))?
            };
            if replace {
                *a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))? = x;
            } else if i <= a.len() {
                a.insert(i, x);
            } else {
                return Err(format!("index {i} out of range"));
            }
            Ok(())
        }
        _ => Err(format!("path {} not found", tokens.join("/"))),
    }
}

/// RFC 6902 JSON patch.
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be a list of operations")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("operation without \"op\"")?;
        let path = pointer_tokens(op["path"].as_str().ok_or("operation without \"path\"")?)?;
        let from = || -> Result<Vec<String>, String> {
            pointer_tokens(op["from"].as_str().ok_or("operation without \"from\"")?)
        };
        match kind {
            "add" => pointer_add(doc, &path, op["value"].clone(), false)?,
            "replace" => pointer_add(doc, &path, op["value"].clone(), true)?,
            "remove" => {
                pointer_remove(doc, &path)?;
            }
            "move" => {
                let x = pointer_remove(doc, &from()?)?;
                pointer_add(doc, &path, x, false)?;
            }
            "copy" => {
                let from = from()?;
                let x = from
                    .iter()
                    .try_fold(&*doc, |v, k| match v {
                        Value::Object(m) => m.get(k),
                        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
                        _ => None,
                    })
                    .ok_or("copy source not found")?
                    .clone();
                pointer_add(doc, &path, x, false)?;
            }
            "test" => {
                let found = path.iter().try_fold(&*doc, |v, k| match v {
                    Value::Object(m) => m.get(k),
                    Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                });
                if found != Some(&op["value"]) {
                    return Err(format!("test failed at {}", op["path"]));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn leaves_of_an_object() {
        let obj = json!({
            "apiVersion": "v1", "kind": "X",
            "metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}, "finalizers": ["f"]},
            "spec": {"a": {"b": 1, "c": [1, 2]}, "d": {}},
            "status": {"s": 1}
        });
        let main: Vec<Path> = leaves(&obj, Scope::Main).into_iter().collect();
        assert_eq!(
            main,
            vec![
                vec!["metadata".to_string(), "finalizers".into()],
                vec![
                    "metadata".to_string(),
                    "labels".into(),
                    "app.kubernetes.io/name".into()
                ],
                p("spec.a.b"),
                p("spec.a.c"),
                p("spec.d"),
            ]
        );
        assert_eq!(leaves(&obj, Scope::Status), [p("status.s")].into());
        let v1 = to_fields_v1(&leaves(&obj, Scope::Main));
        assert_eq!(from_fields_v1(&v1), leaves(&obj, Scope::Main));
    }

    #[test]
    fn set_remove_and_prune() {
        let mut v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1}});
        set(&mut v, &p("spec.y.z"), json!(2));
        remove(&mut v, &p("metadata.labels.a"));
        remove(&mut v, &p("spec.x"));
        assert_eq!(v, json!({"metadata": {}, "spec": {"y": {"z": 2}}}));
        remove(&mut v, &p("spec.y.z"));
        assert_eq!(v, json!({"metadata": {}}));
    }

    #[test]
    fn patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/l/-", "value": 4},
                {"op": "replace", "path": "/a/c", "value": 5},
                {"op": "remove", "path": "/a/d"},
                {"op": "copy", "from": "/a", "path": "/b"},
                {"op": "test", "path": "/b/c", "value": 5},
                {"op": "move", "from": "/b", "path": "/e~1f"},
            ]),
        )
        .unwrap();
        assert_eq!(v, json!({"a": {"c": 5}, "l": [3, 4], "e/f": {"c": 5}}));
        assert!(json_patch(&mut v, &json!([{"op": "test", "path": "/a/c", "value": 1}])).is_err());
    }
}
