//! kube-controller-manager's `ComputeHash` of a pod template, the value behind
//! `pod-template-hash` (ReplicaSets of Deployments) and DaemonSets' revision names.
//!
//! Upstream hashes (FNV-32a) the `go-spew` dump (`%#v`, keys sorted, methods off) of the
//! Go struct `v1.PodTemplateSpec` as the controller holds it, then the collision count
//! (8 bytes, the first four its little-endian `u32`) when the owner has one, and encodes
//! the decimal sum with `SafeEncodeString`. The dump names every field of every struct
//! in Go's declaration order with its Go type, so it is written here from the layout of
//! k8s.io/api v0.33.0 (`pod_template_layout.txt`, taken from Go's reflect by
//! `tools/spew-layout`) walked beside the stored JSON:
//!
//! - an absent field is Go's zero value; an empty list or map is `nil`, as the
//!   controller's protobuf decoding leaves it;
//! - a `resource.Quantity` is what upstream's `ParseQuantity` makes of the string
//!   kube-apiserver would have stored (its canonical form, or the written one where
//!   `ParseQuantity` keeps that), including the cached string;
//! - `intstr.IntOrString` and a zero `metav1.Time` are spelled out as Go holds them.
//!
//! What the layout cannot reproduce returns `None` (a set timestamp, whose Go value
//! carries the controller's local time zone; `managedFields`; a quantity beyond `int64`
//! at nano precision, which Go keeps as an `inf.Dec`); callers then hash the JSON, so
//! such a template still gets a stable name, only not upstream's.
//!
//! The unit tests compare with hashes and dumps made by Go itself (go-spew at the
//! revision k8s.io/kubernetes 1.33 pins, on the real v0.33.0 types, after the JSON
//! round trip kube-apiserver makes; `tools/spew-layout/hash`). End to end,
//! `kubectl create deployment nginx --image=nginx` gets the ReplicaSet
//! `nginx-5869d7778c`, the name real clusters give it (`controllers_template_hash`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// The layout file: one line per type, then one indented line per struct field.
const LAYOUT: &str = include_str!("pod_template_layout.txt");

/// The root type.
const ROOT: &str = "v1.PodTemplateSpec";

/// A Go type as spew prints it.
enum GoType {
    Struct(Vec<Field>),
    Ptr(&'static str),
    Slice(&'static str),
    Map(&'static str),
    String,
    Bool,
    Int,
    /// Types whose JSON is not their Go fields (`resource.Quantity`, `intstr.IntOrString`,
    /// `v1.Time`, `v1.FieldsV1`).
    Special,
}

/// A struct field: its Go name, where its value is in the JSON, and its type.
struct Field {
    go: &'static str,
    /// The JSON key; `None` for an embedded struct inlined into the same object.
    json: Option<&'static str>,
    ty: &'static str,
}

fn layout() -> &'static HashMap<&'static str, GoType> {
    static LAYOUT_MAP: OnceLock<HashMap<&'static str, GoType>> = OnceLock::new();
    LAYOUT_MAP.get_or_init(|| parse_layout(LAYOUT))
}

fn parse_layout(text: &'static str) -> HashMap<&'static str, GoType> {
    let mut types = HashMap::new();
    let mut current: Option<(&'static str, Vec<Field>)> = None;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let words: Vec<&'static str> = line.split_whitespace().collect();
        if line.starts_with(' ') {
            if let (Some((_, fields)), [go, json, ty]) = (current.as_mut(), words.as_slice()) {
                let json = (*json != "-inline").then_some(*json);
                fields.push(Field { go, json, ty });
            }
            continue;
        }
        if let Some((name, fields)) = current.take() {
            types.insert(name, GoType::Struct(fields));
        }
        match words.as_slice() {
            [name, "struct"] => current = Some((name, Vec::new())),
            [name, "ptr", elem] => drop(types.insert(*name, GoType::Ptr(elem))),
            [name, "slice", elem] => drop(types.insert(*name, GoType::Slice(elem))),
            [name, "map", _key, elem] => drop(types.insert(*name, GoType::Map(elem))),
            [name, "string"] => drop(types.insert(*name, GoType::String)),
            [name, "bool"] => drop(types.insert(*name, GoType::Bool)),
            [name, "int32" | "int64"] => drop(types.insert(*name, GoType::Int)),
            [name, "special"] => drop(types.insert(*name, GoType::Special)),
            _ => {}
        }
    }
    if let Some((name, fields)) = current {
        types.insert(name, GoType::Struct(fields));
    }
    types
}

/// Upstream's `ComputeHash(template, collisionCount)`; a template the layout cannot
/// reproduce is hashed from its JSON instead (see the module docs).
pub fn compute_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut bytes = go_dump(template).unwrap_or_else(|| crate::deployments::semantic_template(template).to_string().into_bytes());
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
    }
    crate::deployments::template_hash(&bytes)
}

/// The spew dump of the template as kube-controller-manager holds it, or `None` where
/// the layout cannot reproduce it.
pub fn go_dump(template: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    write_value(&mut out, ROOT, Some(template), false)?;
    Some(out)
}

/// Writes `value` as spew's `%#v` writes a Go value of type `ty`; `bare` leaves the
/// type out, as spew does for slice elements and map entries.
fn write_value(out: &mut Vec<u8>, ty: &'static str, value: Option<&Value>, bare: bool) -> Option<()> {
    let value = value.filter(|v| !v.is_null());
    let go = layout().get(ty)?;
    if let GoType::Ptr(elem) = go {
        match (value, bare) {
            (None, true) => out.extend_from_slice(b"<nil>"),
            (None, false) => typed(out, ty, b"<nil>"),
            (Some(_), true) => out.extend_from_slice(b"<*>"),
            (Some(_), false) => typed(out, ty, b""),
        }
        return match value {
            Some(v) => write_value(out, elem, Some(v), true),
            None => Some(()),
        };
    }
    if !bare {
        typed(out, ty, b"");
    }
    match go {
        GoType::Ptr(_) => None,
        GoType::Struct(fields) => {
            let object = match value {
                Some(Value::Object(map)) => Some(map),
                None => None,
                Some(_) => return None,
            };
            out.push(b'{');
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(field.go.as_bytes());
                out.push(b':');
                let inner = match field.json {
                    Some(key) => object.and_then(|m| m.get(key)),
                    None => value,
                };
                write_value(out, field.ty, inner, false)?;
            }
            out.push(b'}');
            Some(())
        }
        GoType::Slice(elem) => {
            let items = match value {
                Some(Value::Array(items)) => items.as_slice(),
                None => &[],
                Some(_) => return None,
            };
            if items.is_empty() {
                out.extend_from_slice(b"<nil>");
                return Some(());
            }
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_value(out, elem, Some(item), true)?;
            }
            out.push(b']');
            Some(())
        }
        GoType::Map(elem) => {
            let map = match value {
                Some(Value::Object(map)) => Some(map),
                None => None,
                Some(_) => return None,
            };
            let Some(map) = map.filter(|m| !m.is_empty()) else {
                out.extend_from_slice(b"<nil>");
                return Some(());
            };
            // Keys are strings in every map of a pod template; spew sorts them bytewise.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.extend_from_slice(b"map[");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(key.as_bytes());
                out.push(b':');
                write_value(out, elem, map.get(key), true)?;
            }
            out.push(b']');
            Some(())
        }
        GoType::String => {
            match value {
                Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                None => {}
                Some(_) => return None,
            }
            Some(())
        }
        GoType::Bool => {
            let b = match value {
                Some(Value::Bool(b)) => *b,
                None => false,
                Some(_) => return None,
            };
            out.extend_from_slice(if b { b"true" } else { b"false" });
            Some(())
        }
        GoType::Int => {
            let n = match value {
                Some(v) => v.as_i64()?,
                None => 0,
            };
            out.extend_from_slice(n.to_string().as_bytes());
            Some(())
        }
        GoType::Special => write_special(out, ty, value),
    }
}

/// `(type)` then `rest`.
fn typed(out: &mut Vec<u8>, ty: &str, rest: &[u8]) {
    out.push(b'(');
    out.extend_from_slice(ty.as_bytes());
    out.push(b')');
    out.extend_from_slice(rest);
}

fn write_special(out: &mut Vec<u8>, ty: &str, value: Option<&Value>) -> Option<()> {
    match ty {
        "resource.Quantity" => {
            let q = match value {
                None => Quantity::default(),
                Some(Value::String(s)) => as_stored(s)?,
                Some(Value::Number(n)) => as_stored(&n.to_string())?,
                Some(_) => return None,
            };
            let format = match q.format {
                Format::DecimalSI => "DecimalSI",
                Format::BinarySI => "BinarySI",
                Format::DecimalExponent => "DecimalExponent",
                Format::Unset => "",
            };
            // An inf.Dec's big.Int holds its magnitude in 64-bit words, lowest first.
            let dec = match q.dec {
                None => "<nil>".to_string(),
                Some((negative, unscaled)) => {
                    let (low, high) = (unscaled as u64, (unscaled >> 64) as u64);
                    let words = match (low, high) {
                        (0, 0) => "<nil>".to_string(),
                        (low, 0) => format!("[{low}]"),
                        (low, high) => format!("[{low} {high}]"),
                    };
                    format!("{{unscaled:(big.Int){{neg:(bool){negative} abs:(big.nat){words}}} scale:(inf.Scale)9}}")
                }
            };
            let text = format!(
                "{{i:(resource.int64Amount){{value:(int64){} scale:(resource.Scale){}}} d:(resource.infDecAmount){{Dec:(*inf.Dec){dec}}} s:(string){} Format:(resource.Format){format}}}",
                q.value,
                q.scale,
                q.cached.as_deref().unwrap_or("")
            );
            out.extend_from_slice(text.as_bytes());
        }
        "intstr.IntOrString" => {
            let (kind, int, string) = match value {
                None => (0, 0, ""),
                Some(Value::String(s)) => (1, 0, s.as_str()),
                Some(v) => (0, i32::try_from(v.as_i64()?).ok()?, ""),
            };
            out.extend_from_slice(format!("{{Type:(intstr.Type){kind} IntVal:(int32){int} StrVal:(string){string}}}").as_bytes());
        }
        // Only the zero time: a set one holds the controller's *time.Location.
        "v1.Time" if value.is_none() => out.extend_from_slice(b"{Time:(time.Time){wall:(uint64)0 ext:(int64)0 loc:(*time.Location)<nil>}}"),
        _ => return None,
    }
    Some(())
}

/// A quantity's `Format`.
#[derive(Clone, Copy, PartialEq, Debug, Default)]
enum Format {
    #[default]
    Unset,
    DecimalExponent,
    BinarySI,
    DecimalSI,
}

/// A `resource.Quantity` held as an `int64Amount` (value × 10^scale), with the string
/// `ParseQuantity` keeps when it was already canonical; or, when `dec` is set, as an
/// `inf.Dec` (sign and unscaled value at scale 9, where `ParseQuantity` rounds it).
#[derive(Clone, PartialEq, Debug, Default)]
struct Quantity {
    value: i64,
    scale: i32,
    format: Format,
    cached: Option<String>,
    dec: Option<(bool, u128)>,
}

/// What the controller holds for a quantity stored as `text`: kube-apiserver parses it
/// and writes back its cached or canonical string, which the controller parses again.
fn as_stored(text: &str) -> Option<Quantity> {
    let stored = stored_string(text)?;
    if let Some(q) = parse_quantity(&stored) {
        return Some(q);
    }
    let (exact, format) = parse_dec(&stored)?;
    let unscaled = exact.mantissa.checked_mul(10u128.checked_pow(u32::try_from(exact.exp10 + 9).ok()?)?)?;
    Some(Quantity { format, dec: Some((exact.negative, unscaled)), ..Quantity::default() })
}

/// The string kube-apiserver stores for a quantity written as `text` (Go's
/// `MarshalJSON` of what `ParseQuantity` made of it).
fn stored_string(text: &str) -> Option<String> {
    if let Some(q) = parse_quantity(text) {
        let exact = Exact { negative: q.value < 0, mantissa: u128::from(q.value.unsigned_abs()), exp10: q.scale };
        return q.cached.or_else(|| canonical(exact, q.format));
    }
    let (exact, format) = parse_dec(text)?;
    canonical(exact, format)
}

/// `ParseQuantity`'s `inf.Dec` path: the exact value, rounded up to nano units (so its
/// `exp10` is at least -9), binary ones capped at the int64 maximum, and those below
/// one written in decimal.
fn parse_dec(text: &str) -> Option<(Exact, Format)> {
    let (positive, num, denom, suffix) = split_quantity(text)?;
    let (base, exponent, mut format) = interpret_suffix(suffix)?;
    let digits = format!("{num}{denom}");
    let mut exact = Exact { negative: !positive, mantissa: digits.parse().ok()?, exp10: -(denom.len() as i32) };
    if base == 10 {
        exact.exp10 = exact.exp10.checked_add(exponent)?;
    } else {
        exact.mantissa = exact.mantissa.checked_mul(1u128.checked_shl(u32::try_from(exponent).ok()?)?)?;
    }
    if exact.exp10 < -9 {
        let divisor = 10u128.checked_pow((-9 - exact.exp10) as u32)?;
        exact.mantissa = exact.mantissa / divisor + u128::from(!exact.mantissa.is_multiple_of(divisor));
        exact.exp10 = -9;
    }
    if format == Format::BinarySI {
        if exact.cmp_magnitude(i64::MAX as u128).is_gt() {
            exact = Exact { negative: exact.negative, mantissa: i64::MAX as u128, exp10: 0 };
        }
        if exact.mantissa != 0 && exact.less_than(1) {
            format = Format::DecimalSI;
        }
    }
    Some((exact, format))
}

/// An exact decimal, `±mantissa × 10^exp10`.
#[derive(Clone, Copy, Debug)]
struct Exact {
    negative: bool,
    mantissa: u128,
    exp10: i32,
}

impl Exact {
    /// The magnitude when it is a whole number that fits.
    fn integer(self) -> Option<u128> {
        if self.exp10 >= 0 {
            return self.mantissa.checked_mul(10u128.checked_pow(self.exp10 as u32)?);
        }
        let divisor = 10u128.checked_pow((-self.exp10) as u32)?;
        self.mantissa.is_multiple_of(divisor).then_some(self.mantissa / divisor)
    }

    /// The magnitude compared with `n` (a side too large for `u128` is the larger).
    fn cmp_magnitude(self, n: u128) -> std::cmp::Ordering {
        let scale = |x: u128, e: i32| 10u128.checked_pow(e as u32).and_then(|p| x.checked_mul(p));
        let (left, right) = if self.exp10 >= 0 { (scale(self.mantissa, self.exp10), Some(n)) } else { (Some(self.mantissa), scale(n, -self.exp10)) };
        match (left, right) {
            (Some(l), Some(r)) => l.cmp(&r),
            (None, _) => std::cmp::Ordering::Greater,
            (_, None) => std::cmp::Ordering::Less,
        }
    }

    /// Whether the magnitude is below `n`.
    fn less_than(self, n: u128) -> bool {
        self.cmp_magnitude(n).is_lt()
    }
}

/// Upstream's `parseQuantityString`: sign, digits, fraction, suffix.
fn split_quantity(s: &str) -> Option<(bool, &str, &str, &str)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut positive = true;
    match b.first() {
        Some(b'-') => {
            positive = false;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= b.len() {
        return Some((positive, "0", "", ""));
    }
    let start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = if pos == start { "0" } else { &s[start..pos] };
    let mut denom = "";
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let d = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[d..pos];
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < b.len() {
        return None;
    }
    Some((positive, num, denom, &s[suffix_start..]))
}

/// `(base, exponent, format)` of a suffix.
fn interpret_suffix(suffix: &str) -> Option<(u32, i32, Format)> {
    let decimal = |e| Some((10, e, Format::DecimalSI));
    let binary = |e| Some((2, e, Format::BinarySI));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            // Go's ParseInt takes a sign; the exponent is then truncated to int32.
            let e: i64 = s[1..].parse().ok()?;
            Some((10, e as i32, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// Upstream's `ParseQuantity` on its `int64Amount` path; `None` for what it would parse
/// into an `inf.Dec` (or refuse).
fn parse_quantity(s: &str) -> Option<Quantity> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Quantity { format: Format::DecimalSI, cached: Some(s.to_string()), ..Quantity::default() });
    }
    let (positive, num, denom, suffix) = split_quantity(s)?;
    let (_, exponent, format) = interpret_suffix(suffix)?;
    // More digits than an int64 holds take the inf.Dec path anyway.
    let digits = i32::try_from(num.len() + denom.len()).ok().filter(|d| *d <= 40)?;
    let (mut scale, precision, mantissa) = match format {
        Format::BinarySI if exponent >= 0 && denom.is_empty() => {
            (0, 15 - digits - (exponent as f32 * 3.0 / 10.0) as i32 - 1, 1i64.checked_shl(exponent as u32)?)
        }
        Format::BinarySI => (0, -1, 1),
        _ => (exponent, 18 - digits, 1),
    };
    if precision < 0 {
        return None;
    }
    scale = scale.checked_sub(denom.len() as i32)?;
    if scale < -9 {
        return None;
    }
    let shifted = format!("{num}{denom}");
    let value: i64 = shifted.parse().ok()?;
    let mut result = value.checked_mul(mantissa)?;
    if !positive {
        result = -result;
    }
    let canonical = match format {
        Format::BinarySI => exponent % 10 == 0 && value & 0x07 != 0,
        _ => scale % 3 == 0 && !shifted.ends_with("000") && !shifted.starts_with('0'),
    };
    Some(Quantity { value: result, scale, format, cached: canonical.then(|| s.to_string()), dec: None })
}

/// Upstream's `CanonicalizeBytes`: the string kube-apiserver writes for a value held in
/// `format` (`None` where it would not fit the arithmetic here).
fn canonical(q: Exact, format: Format) -> Option<String> {
    if q.mantissa == 0 {
        return Some("0".to_string());
    }
    let sign = if q.negative { "-" } else { "" };
    let mut format = format;
    if format == Format::BinarySI && (q.less_than(1024) || q.integer().is_none()) {
        format = Format::DecimalSI;
    }
    if format == Format::BinarySI {
        let mut amount = q.integer()?;
        let mut exponent = 0;
        while amount >= 1024 && amount % 1024 == 0 {
            amount /= 1024;
            exponent += 1;
        }
        // Upstream has no suffix for 2^0 in its binary table and writes none.
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].get(exponent).copied().unwrap_or("");
        return Some(format!("{sign}{amount}{suffix}"));
    }
    let (mut amount, mut exponent) = (q.mantissa, q.exp10);
    while amount >= 10 && amount % 10 == 0 {
        amount /= 10;
        exponent = exponent.checked_add(1)?;
    }
    while exponent % 3 != 0 {
        amount = amount.checked_mul(10)?;
        exponent = exponent.checked_sub(1)?;
    }
    let suffix = match format {
        Format::DecimalExponent if exponent == 0 => String::new(),
        Format::DecimalExponent => format!("e{exponent}"),
        // A decimal exponent outside upstream's table gets no suffix there either.
        _ => match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        }
        .to_string(),
    };
    Some(format!("{sign}{amount}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Templates with the hashes Go gave them: `ComputeHash(t, nil)` and
    /// `ComputeHash(t, 3)` (see the module docs for how they were made).
    const VECTORS: &str = include_str!("pod_template_hash_vectors.jsonl");

    #[test]
    fn the_layout_covers_every_type_it_names() {
        let types = layout();
        assert!(types.len() > 250, "{} types", types.len());
        for go in types.values() {
            let named: Vec<&str> = match go {
                GoType::Struct(fields) => fields.iter().map(|f| f.ty).collect(),
                GoType::Ptr(e) | GoType::Slice(e) | GoType::Map(e) => vec![e],
                _ => vec![],
            };
            for ty in named {
                assert!(types.contains_key(ty), "{ty} is named but not laid out");
            }
        }
    }

    #[test]
    fn hashes_match_what_go_computes() {
        let mut checked = 0;
        for line in VECTORS.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let template = &v["template"];
            let dump = go_dump(template).unwrap_or_else(|| panic!("not reproducible: {template}"));
            assert_eq!(String::from_utf8_lossy(&dump), v["dump"].as_str().unwrap(), "{template}");
            assert_eq!(compute_hash(template, None), v["hash"], "{template}");
            assert_eq!(compute_hash(template, Some(3)), v["hash3"], "{template}");
            checked += 1;
        }
        assert!(checked >= 10, "{checked} vectors");
    }

    #[test]
    fn quantities_are_canonicalized_as_kube_apiserver_writes_them() {
        for (written, stored) in [
            ("0.5", "500m"),
            ("500m", "500m"),
            ("1000m", "1"),
            ("1", "1"),
            ("1000", "1k"),
            ("1024Mi", "1Gi"),
            ("128Mi", "128Mi"),
            ("1536Ki", "1536Ki"),
            ("100M", "100M"),
            ("2e3", "2e3"),
            ("1e3", "1e3"),
            ("0.1", "100m"),
            ("1.5", "1500m"),
            ("512", "512"),
            ("0m", "0"),
            ("+500m", "+500m"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("0.5", "500m"),
            ("1.5n", "2n"),
            ("-1.5", "-1500m"),
            ("100Gi", "100Gi"),
        ] {
            assert_eq!(stored_string(written).unwrap(), stored, "{written}");
        }
        assert_eq!(as_stored("1Gi").unwrap().cached.as_deref(), Some("1Gi"));
        assert_eq!(as_stored("128Mi").unwrap().cached, None);
        assert!(parse_quantity("1.5Gi").is_none(), "Go holds it as an inf.Dec until stored");
        assert_eq!(as_stored("1Ei").unwrap().dec, Some((false, (1u128 << 60) * 1_000_000_000)), "an inf.Dec even once stored");
        assert!(stored_string("12x").is_none());
    }

    /// A bounded fuzz: mutated quantities and templates get a hash or a fallback, never
    /// a panic (overflowing exponents, huge digit strings, wrong JSON types).
    #[test]
    fn mutated_quantities_and_templates_never_panic() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let seeds = [
            "1.5Gi",
            "500m",
            "1e-2147483648",
            "10e2147483647",
            "9223372036854775807Ei",
            "-0.000000000001",
            "+01.10E3",
            "1.",
            ".5",
            "99999999999999999999999999999999999999999",
        ];
        let alphabet = b"0123456789.+-eEinumkKMGTP ";
        for _ in 0..20_000 {
            let mut q: Vec<u8> = seeds[rng.usize(..seeds.len())].bytes().collect();
            for _ in 0..rng.usize(0..4) {
                let at = rng.usize(..=q.len());
                match rng.u8(..3) {
                    0 => q.insert(at, alphabet[rng.usize(..alphabet.len())]),
                    1 if at < q.len() => drop(q.remove(at)),
                    _ => q.truncate(at),
                }
            }
            let q = String::from_utf8_lossy(&q).into_owned();
            let _ = as_stored(&q);
            let t =
                serde_json::json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": q}}}], "volumes": [{"emptyDir": {"sizeLimit": q}}]}});
            let _ = compute_hash(&t, Some(rng.i64(..)));
        }
        for wrong in
            [json!(1), json!([]), json!({"spec": {"containers": "x"}}), json!({"spec": {"priority": 1e300}}), json!({"metadata": {"labels": {"a": 1}}})]
        {
            let _ = compute_hash(&wrong, None);
        }
    }

    #[test]
    fn what_cannot_be_reproduced_still_hashes_stably() {
        let t = serde_json::json!({"metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "a", "image": "b"}]}});
        assert!(go_dump(&t).is_none());
        assert_eq!(compute_hash(&t, None), compute_hash(&t.clone(), None));
        assert_ne!(compute_hash(&t, None), compute_hash(&t, Some(1)));
    }
}
