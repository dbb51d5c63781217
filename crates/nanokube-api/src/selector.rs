//! Label and field selectors, with upstream's syntax (`k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a)`, `k`, `!k`, `k>1`, `k<1`; field selectors with `\` escapes).

use serde_json::Value;

use crate::error::ApiError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// `k=v` / `k==v` / `k in (v…)`: the label exists and has one of the values.
    In(String, Vec<String>),
    /// `k!=v` / `k notin (v…)`: the label is missing or has none of the values.
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
    /// `k>n`.
    Gt(String, i64),
    /// `k<n`.
    Lt(String, i64),
}

/// A parsed label selector: all requirements must hold (comma is AND).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    /// The requirements, in order.
    pub requirements: Vec<Requirement>,
}

fn parse_err(msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {msg}"))
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(crate::validation::is_dns1123_subdomain);
    name_ok && prefix_ok
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Split on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
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
    out
}

fn parse_set(key: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    if !rest.starts_with('(') || !rest.ends_with(')') {
        return Err(parse_err(format!("found '{rest}', expected: '(' for key {key:?}")));
    }
    let inner = &rest[1..rest.len() - 1];
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &vals {
        if !valid_label_value(v) {
            return Err(parse_err(format!(
                "values[0][{key}]: Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
            )));
        }
    }
    Ok(vals)
}

impl LabelSelector {
    /// Parse a selector string; an empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(parse_err("found '', expected: identifier"));
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                let k = k.trim();
                check_key(k)?;
                Requirement::DoesNotExist(k.to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                check_key(k)?;
                check_value(k, v)?;
                Requirement::NotIn(k.to_string(), vec![v.to_string()])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                let (k, v) = (k.trim(), v.trim());
                check_key(k)?;
                check_value(k, v)?;
                Requirement::In(k.to_string(), vec![v.to_string()])
            } else if let Some((k, v)) = part.split_once('>') {
                let k = k.trim();
                check_key(k)?;
                let n = v.trim().parse::<i64>().map_err(|_| parse_err(format!("for 'Gt', 'Lt' operators, the value must be an integer: {v}")))?;
                Requirement::Gt(k.to_string(), n)
            } else if let Some((k, v)) = part.split_once('<') {
                let k = k.trim();
                check_key(k)?;
                let n = v.trim().parse::<i64>().map_err(|_| parse_err(format!("for 'Gt', 'Lt' operators, the value must be an integer: {v}")))?;
                Requirement::Lt(k.to_string(), n)
            } else if let Some(idx) = find_word(part, "notin") {
                let k = part[..idx].trim();
                check_key(k)?;
                Requirement::NotIn(k.to_string(), parse_set(k, &part[idx + 5..])?)
            } else if let Some(idx) = find_word(part, "in") {
                let k = part[..idx].trim();
                check_key(k)?;
                Requirement::In(k.to_string(), parse_set(k, &part[idx + 2..])?)
            } else {
                if part.contains(char::is_whitespace) || part.contains('(') || part.contains(')') {
                    return Err(parse_err(format!("found '{part}', expected: in, notin, =, ==, !=, gt, lt")));
                }
                check_key(part)?;
                Requirement::Exists(part.to_string())
            };
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Build a selector from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(sel: &Value) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                requirements.push(Requirement::In(k.clone(), vec![v.as_str().unwrap_or("").to_string()]));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("").to_string();
                let values: Vec<String> =
                    e.get("values").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
                let req = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    op => return Err(ApiError::bad_request(format!("{op:?} is not a valid label selector operator"))),
                };
                requirements.push(req);
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the labels (a `metadata.labels` map, or `None`) match.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
            Requirement::Gt(k, n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        })
    }

    /// Render as a selector string (`a=b,c in (d,e)`), as `Scale.status.selector` carries it.
    pub fn to_string_form(&self) -> String {
        self.requirements
            .iter()
            .map(|r| match r {
                Requirement::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
                Requirement::In(k, v) => format!("{k} in ({})", v.join(",")),
                Requirement::NotIn(k, v) if v.len() == 1 => format!("{k}!={}", v[0]),
                Requirement::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
                Requirement::Gt(k, n) => format!("{k}>{n}"),
                Requirement::Lt(k, n) => format!("{k}<{n}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Find ` word ` (or `word(`) as a separate operator token.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(pos) = s[from..].find(word) {
        let i = from + pos;
        let before_ok = i > 0 && bytes[i - 1].is_ascii_whitespace();
        let after = bytes.get(i + word.len()).copied();
        let after_ok = matches!(after, Some(b' ') | Some(b'\t') | Some(b'('));
        if before_ok && after_ok {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

fn check_key(k: &str) -> Result<(), ApiError> {
    if valid_label_key(k) {
        Ok(())
    } else {
        Err(parse_err(format!("key: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")))
    }
}

fn check_value(k: &str, v: &str) -> Result<(), ApiError> {
    if valid_label_value(v) {
        Ok(())
    } else {
        Err(parse_err(format!("values[0][{k}]: Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")))
    }
}

/// One field-selector term.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTerm {
    /// The field, e.g. `metadata.name`.
    pub field: String,
    /// The value compared against.
    pub value: String,
    /// `!=` instead of `=`.
    pub negated: bool,
}

/// A parsed field selector (comma is AND).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    /// Terms, in order.
    pub terms: Vec<FieldTerm>,
    /// Further selectable fields of this resource (a CRD's `selectableFields`, as dotted
    /// paths), beyond the built-in table.
    pub extra: Vec<String>,
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.last_mut().unwrap().push(c);
            if let Some(n) = chars.next() {
                out.last_mut().unwrap().push(n);
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, ApiError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => return Err(ApiError::bad_request(format!("invalid field selector: invalid escape sequence: \\{n}"))),
                None => return Err(ApiError::bad_request("invalid field selector: unterminated escape sequence")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parse a field selector string.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { terms, extra: Vec::new() });
        }
        for part in split_unescaped(s, ',') {
            if part.is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some((f, v)) = split_op(&part, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_op(&part, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_op(&part, "=") {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{s}'; can't understand '{part}'")));
            };
            terms.push(FieldTerm { field: unescape(&field)?, value: unescape(&value)?, negated });
        }
        Ok(FieldSelector { terms, extra: Vec::new() })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Check every field is supported for the resource; upstream answers 400 otherwise.
    pub fn check_supported(&self, group: &str, plural: &str, namespaced: bool) -> Result<(), ApiError> {
        for t in &self.terms {
            if field_value_path(group, plural, namespaced, &t.field).is_none() && !self.extra.contains(&t.field) {
                return Err(ApiError::bad_request(format!("field label not supported: {}", t.field)));
            }
        }
        Ok(())
    }

    /// Whether an object matches (unsupported fields never match; check first).
    pub fn matches(&self, group: &str, plural: &str, namespaced: bool, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let v = match field_value_path(group, plural, namespaced, &t.field) {
                Some(path) => field_value(obj, path),
                None if self.extra.contains(&t.field) => field_value(obj, &t.field),
                None => return false,
            };
            (v == t.value) != t.negated
        })
    }

    /// The value required for `metadata.name`, if the selector pins it (single-object watches).
    pub fn pinned_name(&self) -> Option<&str> {
        self.terms.iter().find(|t| t.field == "metadata.name" && !t.negated).map(|t| t.value.as_str())
    }
}

fn split_op(s: &str, op: &str) -> Option<(String, String)> {
    // Find the first unescaped occurrence of op.
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        // Compared as bytes: `i` steps through bytes, and may sit inside a multi-byte
        // character (`é=x`); `op` is ASCII, so where it matches is a character boundary.
        if b[i..].starts_with(op.as_bytes()) {
            if op == "=" && i > 0 && (b[i - 1] == b'!' || b[i - 1] == b'=') {
                i += 1;
                continue;
            }
            return Some((s[..i].trim().to_string(), s[i + op.len()..].trim().to_string()));
        }
        i += 1;
    }
    None
}

/// The JSON path (dotted) that backs a selectable field, or `None` if unsupported.
fn field_value_path(group: &str, plural: &str, namespaced: bool, field: &str) -> Option<&'static str> {
    match field {
        "metadata.name" => return Some("metadata.name"),
        "metadata.namespace" if namespaced => return Some("metadata.namespace"),
        _ => {}
    }
    let fields: &[&'static str] = match (group, plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "events") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    };
    fields.iter().copied().find(|f| *f == field)
}

/// Render a field's value as the string field selectors compare against.
fn field_value(obj: &Value, path: &str) -> String {
    if path == "source" {
        return obj.pointer("/source/component").and_then(Value::as_str).unwrap_or("").to_string();
    }
    let pointer = format!("/{}", path.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // Upstream renders unset booleans as "false" and unset numbers as "0".
        _ => match path {
            "spec.hostNetwork" | "spec.unschedulable" => "false".into(),
            "status.replicas" | "status.successful" => "0".into(),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selector_full_syntax() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web,db)"));
        assert!(m("tier,app=web"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("n>4"));
        assert!(!m("n<4"));
        assert!(m(""));
        assert!(m("app in (web),tier notin (back)"));
    }

    #[test]
    fn label_selector_errors_are_bad_requests() {
        for bad in ["app=web=x", "a b", "app in web", "=x", "n>x", "app=-bad-"] {
            let e = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
        }
    }

    #[test]
    fn field_selector_with_escapes() {
        let f = FieldSelector::parse(r"metadata.name=a\,b,metadata.namespace!=x").unwrap();
        assert_eq!(f.terms[0].value, "a,b");
        assert!(f.terms[1].negated);
        let obj = json!({"metadata": {"name": "a,b", "namespace": "y"}});
        assert!(f.matches("", "pods", true, &obj));
    }

    #[test]
    fn unsupported_field_is_rejected() {
        assert!(FieldSelector::parse("\u{e9}=x").is_ok());
        // An escape before a multi-byte character: an error or not, never a panic.
        let _ = FieldSelector::parse("a\\\u{e9}=x,\u{e9}\u{e9}!=y");
        let f = FieldSelector::parse("spec.foo=bar").unwrap();
        let e = f.check_supported("", "pods", true).unwrap_err();
        assert_eq!(e.message, "field label not supported: spec.foo");
        assert!(FieldSelector::parse("status.phase=Running").unwrap().check_supported("", "pods", true).is_ok());
    }

    #[test]
    fn event_fields_and_pinned_name() {
        let f = FieldSelector::parse("involvedObject.name=web,involvedObject.namespace=default").unwrap();
        let ev = json!({"involvedObject": {"name": "web", "namespace": "default"}});
        assert!(f.matches("", "events", true, &ev));
        assert_eq!(FieldSelector::parse("metadata.name=x").unwrap().pinned_name(), Some("x"));
    }
}
