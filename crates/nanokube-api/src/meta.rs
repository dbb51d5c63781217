//! Helpers over `metadata` of JSON objects, timestamps and generated names.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `metadata.name`, or `""`.
pub fn name(obj: &Value) -> &str {
    field(obj, "name").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.<key>`. (Cheaper than `Value::pointer`, which allocates per segment, and
/// these are read several times per request.)
pub fn field<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get("metadata")?.get(key)
}

/// `metadata.namespace`, or `""`.
pub fn namespace(obj: &Value) -> &str {
    field(obj, "namespace").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.uid`, or `""`.
pub fn uid(obj: &Value) -> &str {
    field(obj, "uid").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.resourceVersion`, or `""`.
pub fn resource_version(obj: &Value) -> &str {
    field(obj, "resourceVersion").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.labels` as a map (empty if absent).
pub fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    field(obj, "labels").and_then(Value::as_object)
}

/// `metadata.deletionTimestamp` is set.
pub fn is_deleting(obj: &Value) -> bool {
    field(obj, "deletionTimestamp").is_some_and(|v| !v.is_null())
}

/// `metadata.finalizers` (empty if absent).
pub fn finalizers(obj: &Value) -> Vec<String> {
    field(obj, "finalizers").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// A mutable `metadata` map, created if missing or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("object")
}

/// Now, as upstream writes `metav1.Time`: RFC 3339, UTC, whole seconds.
pub fn now_rfc3339() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Format a time as `metav1.Time` (whole seconds, `Z`).
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// Format a time as `metav1.MicroTime` (`.000000Z`).
pub fn format_micro_time(t: OffsetDateTime) -> String {
    let micros = t.microsecond();
    let whole = t.replace_nanosecond(0).unwrap_or(t);
    let base = whole.format(&Rfc3339).unwrap_or_default();
    format!("{}.{:06}Z", base.trim_end_matches('Z'), micros)
}

/// Parse an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// A new UUIDv4 string for `metadata.uid`.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The alphabet upstream uses for generated name suffixes (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters from upstream's generated-name alphabet.
pub fn random_suffix(n: usize) -> String {
    (0..n).map(|_| SUFFIX_ALPHABET[fastrand::usize(..SUFFIX_ALPHABET.len())] as char).collect()
}

/// `generateName` plus five random characters, truncated like upstream (max 63 chars of prefix kept to 58).
pub fn generate_name(prefix: &str) -> String {
    const MAX_PREFIX: usize = 63 - 5;
    // Cut at a character boundary: the prefix is the client's.
    let mut end = prefix.len().min(MAX_PREFIX);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    let p = &prefix[..end];
    format!("{}{}", p, random_suffix(5))
}

/// Upstream's `HumanDuration`, used for AGE columns.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 { format!("{m}m") } else { format!("{m}m{rem}s") };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = (s % 3600) / 60;
        return if rm == 0 { format!("{h}h") } else { format!("{h}h{rm}m") };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let d = h / 24;
        let rh = h % 24;
        return if rh == 0 { format!("{d}d") } else { format!("{d}d{rh}h") };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let dy = (h % (24 * 365)) / 24;
        return if dy == 0 { format!("{y}y") } else { format!("{y}y{dy}d") };
    }
    format!("{}y", h / (24 * 365))
}

/// Age of an object from its `creationTimestamp`, rendered like kubectl's AGE column.
pub fn age(obj: &Value, now: OffsetDateTime) -> String {
    match field(obj, "creationTimestamp").and_then(Value::as_str).and_then(parse_time) {
        Some(t) => human_duration((now - t).whole_seconds()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_matches_upstream_buckets() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn generated_names_use_the_upstream_alphabet() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-"));
        assert_eq!(n.len(), 9);
        assert!(n[4..].bytes().all(|b| SUFFIX_ALPHABET.contains(&b)));
    }

    #[test]
    fn micro_time_has_six_digits() {
        let t = OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert_eq!(format_micro_time(t), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(t), "1970-01-01T00:00:00Z");
    }
}
