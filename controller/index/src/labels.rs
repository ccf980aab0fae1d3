//! [`Labels`]: a label set (a pod's labels, a template's, a selector's `matchLabels`),
//! packed.
//!
//! The index holds about four sets a workload (its pods', its template's, its Services'
//! selectors, its Sidecar's labels and selector): 100k at 20k workloads. As
//! `BTreeMap<String, String>` a set costs a 544-byte leaf node (room for 11 entries) plus
//! two allocations an entry, ~0.6 KB for one label and ~0.9 KB for six; packed, it is its
//! text and 12 bytes an entry in two allocations (bench P7).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A label set, sorted by key, keys unique (a later duplicate replaces the earlier, as in
/// a map). Keys and values are stored back to back in one string; entry `i` is
/// `text[start..key_end]` = `text[key_end..value_end]`, `spans[i] = [start, key_end,
/// value_end]`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    text: Box<str>,
    spans: Box<[[u32; 3]]>,
}

impl Labels {
    pub fn new() -> Self {
        Labels::default()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn key(&self, &[start, key_end, _]: &[u32; 3]) -> &str {
        self.text
            .get(start as usize..key_end as usize)
            .unwrap_or_default()
    }

    fn entry(&self, span: &[u32; 3]) -> (&str, &str) {
        let [_, key_end, value_end] = *span;
        let value = self.text.get(key_end as usize..value_end as usize);
        (self.key(span), value.unwrap_or_default())
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + ExactSizeIterator {
        self.spans.iter().map(|span| self.entry(span))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self
            .spans
            .binary_search_by(|span| self.key(span).cmp(key))
            .ok()?;
        self.spans.get(i).map(|span| self.entry(span).1)
    }

    /// Whether every entry of `self` is in `labels` with the same value (a selector's
    /// `matchLabels` against a workload's labels; an empty selector selects everything).
    pub fn is_subset_of(&self, labels: &Labels) -> bool {
        self.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Sets `key` to `value` (repacks the set: for building one, not for hot paths).
    pub fn insert(&mut self, key: String, value: String) {
        self.extend([(key, value)]);
    }

    /// Adds the entries, a later one replacing an earlier with the same key (repacks).
    pub fn extend(&mut self, entries: impl IntoIterator<Item = (String, String)>) {
        let mut map = self.to_map();
        map.extend(entries);
        *self = Labels::from(&map);
    }

    /// The set as a map (for rendering into Istio objects).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Packs sorted, unique entries.
    fn pack<'a>(sorted: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let bytes = sorted.clone().fold(0usize, |n, (k, v)| {
            n.saturating_add(k.len()).saturating_add(v.len())
        });
        let mut text = String::with_capacity(bytes);
        let mut spans = Vec::with_capacity(sorted.clone().count());
        let offset = |text: &String| u32::try_from(text.len()).ok();
        for (k, v) in sorted {
            let start = offset(&text);
            text.push_str(k);
            let key_end = offset(&text);
            text.push_str(v);
            // A label set of 4 GiB is no Kubernetes object: what does not fit is left out.
            let (Some(start), Some(key_end), Some(value_end)) = (start, key_end, offset(&text))
            else {
                break;
            };
            spans.push([start, key_end, value_end]);
        }
        Labels {
            text: text.into_boxed_str(),
            spans: spans.into_boxed_slice(),
        }
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        Labels::pack(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels::from(&map)
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(entries: [(String, String); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Labels::from(&iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Labels {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let map: BTreeMap<&str, &str> = iter.into_iter().collect();
        Labels::pack(map.iter().map(|(k, v)| (*k, *v)))
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Labels::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn entries_come_back_sorted_and_found_by_key() {
        let l = labels(&[
            ("version", "v1"),
            ("app", "web"),
            ("", "empty key"),
            ("k", ""),
        ]);
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [
                ("", "empty key"),
                ("app", "web"),
                ("k", ""),
                ("version", "v1")
            ]
        );
        assert_eq!(l.len(), 4);
        for (k, v) in [
            ("", "empty key"),
            ("app", "web"),
            ("k", ""),
            ("version", "v1"),
        ] {
            assert_eq!(l.get(k), Some(v), "{k}");
        }
        for absent in ["ap", "apps", "z", "versio"] {
            assert_eq!(l.get(absent), None, "{absent}");
        }
        assert!(Labels::new().is_empty());
        assert_eq!(Labels::new().get("app"), None);
    }

    #[test]
    fn a_later_duplicate_replaces_the_earlier_as_in_a_map() {
        let l = labels(&[("app", "a"), ("app", "b")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), [("app", "b")]);
        let owned: Labels = [
            ("app".to_string(), "a".to_string()),
            ("app".into(), "c".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(owned.get("app"), Some("c"));
    }

    #[test]
    fn equal_sets_are_equal_however_built() {
        let map = BTreeMap::from([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
        let a = Labels::from(&map);
        let b = labels(&[("b", "2"), ("a", "1")]);
        assert_eq!(a, b);
        let hash = |l: &Labels| {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(l)
        };
        assert_eq!(hash(&a), hash(&b));
        // Boundaries are part of the value: "ab"="" is not "a"="b".
        assert_ne!(labels(&[("ab", "")]), labels(&[("a", "b")]));
        assert_eq!(a.to_map(), map);
    }

    #[test]
    fn subsets_are_what_selectors_select() {
        let pod = labels(&[("app", "web"), ("version", "v1")]);
        let cases = [
            (labels(&[]), true),
            (labels(&[("app", "web")]), true),
            (labels(&[("app", "web"), ("version", "v1")]), true),
            (labels(&[("app", "api")]), false),
            (labels(&[("app", "web"), ("tier", "x")]), false),
        ];
        for (selector, want) in cases {
            assert_eq!(selector.is_subset_of(&pod), want, "{selector:?}");
        }
    }

    #[test]
    fn it_reads_and_writes_as_a_map() {
        let l: Labels = serde_json::from_str(r#"{"version":"v1","app":"web"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"app":"web","version":"v1"}"#
        );
        assert_eq!(format!("{l:?}"), r#"{"app": "web", "version": "v1"}"#);
        let err = serde_json::from_str::<Labels>(r#"{"app":1}"#).unwrap_err();
        assert!(err.to_string().contains("string"), "{err}");
    }

    #[test]
    fn multibyte_text_splits_on_entry_boundaries() {
        let l = labels(&[("é", "ü"), ("日本", "語")]);
        assert_eq!(l.get("é"), Some("ü"));
        assert_eq!(l.get("日本"), Some("語"));
    }
}
