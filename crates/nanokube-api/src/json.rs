//! JSON helpers the server needs beyond `serde_json::Value`: finding duplicate object
//! keys, which `Value` silently merges (last wins) but upstream's strict field
//! validation reports as `duplicate field "spec.replicas"`.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Paths of duplicated keys in a JSON document (`metadata.name`, `spec.containers[0].image`).
///
/// Every write with a JSON body passes through here, so the walk allocates nothing for
/// documents without duplicates and unescaped keys: keys are borrowed from the body and
/// a path is only spelled out when a duplicate is found.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Walk { path: &mut path, found: &mut found }.deserialize(&mut de);
    found
}

/// One step of the path from the root to the value being walked.
enum Step<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

fn spell(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

struct Walk<'a, 'de> {
    path: &'a mut Vec<Step<'de>>,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key, borrowed from the body unless it has escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Keys seen in one object: a short list scanned in place, a set once it grows.
const SCAN_LIMIT: usize = 16;

impl<'de> Visitor<'de> for Walk<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.path.push(Step::Index(i));
            let more = seq.next_element_seed(Walk { path: self.path, found: self.found })?.is_some();
            self.path.pop();
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut few: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let duplicate = if many.is_empty() && few.len() < SCAN_LIMIT {
                let dup = few.contains(&key);
                if !dup {
                    few.push(key.clone());
                }
                dup
            } else {
                many.extend(few.drain(..));
                !many.insert(key.clone())
            };
            self.path.push(Step::Key(key));
            if duplicate {
                self.found.push(spell(self.path));
            }
            map.next_value_seed(Walk { path: self.path, found: self.found })?;
            self.path.pop();
        }
        Ok(())
    }
}

/// Whether two stored objects have the same `spec`, byte for byte, read without decoding
/// it (a status write leaves a pod's spec as it was). False where either has none or does
/// not parse.
pub fn same_spec(a: &[u8], b: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Spec<'a> {
        #[serde(borrow, default)]
        spec: Option<&'a serde_json::value::RawValue>,
    }
    let spec = |bytes| serde_json::from_slice::<Spec<'_>>(bytes).ok().and_then(|s| s.spec).map(|s| s.get());
    matches!((spec(a), spec(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_duplicates_at_any_depth() {
        assert_eq!(duplicate_fields(br#"{"a":1,"b":{"c":1,"c":2},"d":[{"e":1,"e":1}],"a":2}"#), ["b.c", "d[0].e", "a"]);
        assert!(duplicate_fields(br#"{"a":{"a":1}}"#).is_empty());
        // Escaped keys compare by their value; a large object switches to a set.
        assert_eq!(duplicate_fields(br#"{"x":{"\u0061":1,"a":2}}"#), ["x.a"]);
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!("{{\"m\":{{{},\"k3\":0,\"k39\":1}}}}", many.join(","));
        assert_eq!(duplicate_fields(body.as_bytes()), ["m.k3", "m.k39"]);
        assert!(duplicate_fields(format!("{{{}}}", many.join(",")).as_bytes()).is_empty());
    }
}

/// The deepest nesting of arrays and objects an object may have when it is written.
///
/// Every reader must accept what a write stored: `serde_json` (this server's own reads,
/// and kube-rs clients) refuses documents nested 128 levels or more, and a list or a
/// watch event wraps an object in two or three more levels. Upstream's Go decoder allows
/// 10,000; no real object comes near either.
pub const MAX_DEPTH: usize = 100;

/// The nesting depth of a value (a scalar is 0, `{}` and `[]` are 1), counted without
/// recursion and giving up past `limit` (returns `limit + 1` then), so a hostile value
/// costs at most a walk of its first `limit` levels per branch.
pub fn depth_upto(value: &Value, limit: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    let nested = |c: &&Value| c.is_array() || c.is_object();
    while let Some((v, d)) = stack.pop() {
        let here = d + 1;
        match v {
            Value::Array(a) => stack.extend(a.iter().filter(nested).map(|c| (c, here))),
            Value::Object(m) => stack.extend(m.values().filter(nested).map(|c| (c, here))),
            _ => continue,
        }
        deepest = deepest.max(here);
        if deepest > limit {
            return limit + 1;
        }
    }
    deepest
}

/// The length of a value's compact JSON encoding (escapes inside strings not counted),
/// counted without serializing it and giving up once it passes `limit` (returns a number
/// above `limit` then).
pub fn encoded_len_upto(value: &Value, limit: usize) -> usize {
    let mut total = 0usize;
    let mut stack: Vec<&Value> = vec![value];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null => 4,
            Value::Bool(b) => 4 + usize::from(!*b),
            Value::Number(n) => n.to_string().len(),
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter());
                2 + a.len().saturating_sub(1)
            }
            Value::Object(m) => {
                stack.extend(m.values());
                2 + m.len().saturating_sub(1) + m.keys().map(|k| k.len() + 3).sum::<usize>()
            }
        };
        if total > limit {
            return total;
        }
    }
    total
}

#[cfg(test)]
mod depth_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_and_length() {
        assert_eq!(depth_upto(&json!(1), 10), 0);
        assert_eq!(depth_upto(&json!({}), 10), 1);
        assert_eq!(depth_upto(&json!({"a": [1, {"b": []}], "c": {}}), 10), 4);
        assert_eq!(depth_upto(&json!([[[[[]]]]]), 3), 4);
        for v in [json!(null), json!({"a": [1, true, false, "x\u{e9}"], "b": {"c": -1.5}}), json!([])] {
            assert_eq!(encoded_len_upto(&v, usize::MAX), serde_json::to_vec(&v).unwrap().len(), "{v}");
        }
        assert!(encoded_len_upto(&json!(["aaaa", "bbbb", "cccc"]), 5) > 5);
    }
}

/// Whether a YAML (or JSON) text opens flow collections (`[`, `{`) nested deeper than
/// `limit`, found in one linear pass before any parser sees the text: YAML parsers read
/// a whole document into events before anything can refuse its depth, and a body of
/// nothing but `[` costs seconds. Quotes are not tracked (YAML's rules for them depend on
/// context), so brackets inside strings count too; only more than `limit` of them left
/// open at once is refused.
pub fn flow_depth_exceeds(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    for &b in text {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod flow_tests {
    #[test]
    fn flow_depth() {
        assert!(!super::flow_depth_exceeds(b"a: [1, {b: [2]}]\nc: '[x]'", 3));
        assert!(super::flow_depth_exceeds(&[b'['; 101], 100));
        assert!(!super::flow_depth_exceeds("[]".repeat(10_000).as_bytes(), 1));
    }
}
