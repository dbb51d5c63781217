//! JSON helpers the server needs beyond `serde_json::Value`: finding duplicate object
//! keys, which `Value` silently merges (last wins) but upstream's strict field
//! validation reports as `duplicate field "spec.replicas"`.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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
