//! Label selectors (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) and field selectors
//! (`metadata.name=x,status.phase!=Running`, any dotted path).

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selectors {
    labels: Vec<LabelReq>,
    fields: Vec<(Vec<String>, bool, String)>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, got {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(format!("invalid label key {k:?}"));
    }
    Ok(k.to_string())
}

impl Selectors {
    pub(crate) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        let mut sel = Selectors::default();
        for req in labels.map(split_top).unwrap_or_default() {
            let r = if let Some(k) = req.strip_prefix('!') {
                LabelReq::NotExists(valid_key(k)?)
            } else if let Some((k, v)) = req.split_once("!=") {
                LabelReq::NotEq(valid_key(k)?, v.trim().into())
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                LabelReq::Eq(valid_key(k)?, v.trim().into())
            } else if let Some((k, rest)) = req.split_once(" notin ") {
                LabelReq::NotIn(valid_key(k)?, set_values(rest)?)
            } else if let Some((k, rest)) = req.split_once(" in ") {
                LabelReq::In(valid_key(k)?, set_values(rest)?)
            } else {
                LabelReq::Exists(valid_key(req)?)
            };
            sel.labels.push(r);
        }
        for req in fields.map(split_top).unwrap_or_default() {
            let (k, eq, v) = if let Some((k, v)) = req.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector requirement {req:?}"));
            };
            let path = k.trim().split('.').map(String::from).collect();
            sel.fields.push((path, eq, v.trim().to_string()));
        }
        Ok(sel)
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(path, eq, want)| {
                let got = crate::fields::get(obj, path)
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                (got == *want) == *eq
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web", "tier": "fe"}},
                         "status": {"phase": "Running"}});
        let m = |l: Option<&str>, f: Option<&str>| Selectors::parse(l, f).unwrap().matches(&obj);
        assert!(m(Some("app=web"), None));
        assert!(m(Some("app==web,tier"), None));
        assert!(!m(Some("app!=web"), None));
        assert!(m(Some("app in (web, api),!missing"), None));
        assert!(!m(Some("tier notin (fe)"), None));
        assert!(m(Some("missing notin (x)"), None));
        assert!(!m(Some("missing"), None));
        assert!(m(None, Some("metadata.name=a,metadata.namespace=ns")));
        assert!(m(None, Some("status.phase!=Pending")));
        assert!(!m(None, Some("metadata.name=b")));
        assert!(Selectors::parse(None, Some("nonsense")).is_err());
        assert!(Selectors::parse(Some("a in b"), None).is_err());
    }
}
