//! The access map (the seed's "draw it"): who reached the API, how they authenticated,
//! what they touched and what they were allowed, drawn as an SVG.
//!
//! The API server records every request it serves ([`AccessMap::record`]); the map
//! keeps counts per identity and per (identity, resource, namespace) edge, the last
//! denial's reason, a few recent request lines and a per-second rate over the last
//! [`RATE_WINDOW`] seconds. It is bounded ([`MAX_EDGES`], [`MAX_IDENTITIES`]; the least
//! recently seen go first), so a client inventing names cannot grow it without end.
//!
//! [`AccessMap::svg`] draws identities on the left, the API server's stages
//! (authentication → authorization → admission) in the middle, resources on the right,
//! and underneath the in-cluster and data-plane paths the server passes in
//! ([`Paths`]). The SVG uses presentation attributes only (no `<style>`, no script), so
//! it stands alone in a file and also inside the dashboard under its strict CSP; each
//! node and edge carries `data-title`/`data-detail` for the page to show on click.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Most edges kept.
pub const MAX_EDGES: usize = 2_000;
/// Most identities kept.
pub const MAX_IDENTITIES: usize = 500;
/// Seconds the request rate is averaged over.
pub const RATE_WINDOW: usize = 10;
/// Request lines kept per edge.
pub const RECENT: usize = 5;
/// Edges drawn (the busiest); the JSON form has them all.
pub const DRAWN_EDGES: usize = 60;

/// One request as the API server saw it.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The authenticated user name (before impersonation).
    pub identity: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// How it authenticated: `x509 client certificate`, `service-account token`,
    /// `bootstrap token`, `static token`, `anonymous`.
    pub method: String,
    /// Paths it came through: `dashboard session`, `proxy` (an `X-Forwarded-For` hop),
    /// `impersonating <user>`.
    pub via: Vec<String>,
    /// The client's address.
    pub source: String,
    /// The request's verb (`get`, `list`, `watch`, `create`…).
    pub verb: String,
    /// `pods`, `deployments.apps`, `pods/exec`, or a non-resource path.
    pub target: String,
    /// The namespace (empty: cluster scope).
    pub namespace: String,
    /// Whether authorization allowed it (`None`: it failed before, e.g. a bad token).
    pub allowed: Option<bool>,
    /// The HTTP status answered.
    pub code: u16,
    /// Why it was refused, when it was.
    pub reason: String,
    /// The request URI (never holds a credential: the API takes none in URLs).
    pub uri: String,
}

#[derive(Default)]
struct Identity {
    groups: Vec<String>,
    methods: Vec<String>,
    via: Vec<String>,
    sources: Vec<String>,
    total: u64,
    denied: u64,
    last: Option<Instant>,
}

#[derive(Default)]
struct Edge {
    verbs: Vec<String>,
    allowed: u64,
    denied: u64,
    last_denial: Option<String>,
    recent: VecDeque<String>,
    /// Requests per second over the last RATE_WINDOW seconds, by `second % RATE_WINDOW`.
    buckets: [u32; RATE_WINDOW],
    bucket_second: [u64; RATE_WINDOW],
    last: Option<Instant>,
}

type EdgeKey = (String, String, String);

#[derive(Default)]
struct Inner {
    identities: HashMap<String, Identity>,
    edges: HashMap<EdgeKey, Edge>,
}

/// The access map's counts (one per API server).
#[derive(Default)]
pub struct AccessMap {
    inner: Mutex<Inner>,
}

/// What the map draws besides the request stream: paths that exist in the objects.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// Pods by IP (`ns/name`), to name sources inside the cluster.
    pub pods_by_ip: HashMap<String, String>,
    /// `host:port` of the `kubernetes` Service (how pods reach the API).
    pub api_service: String,
    /// Data-plane entries: (entry point, `Service ns/name`, ready endpoints).
    pub services: Vec<(String, String, usize)>,
}

/// The RBAC explanation for an edge: identity, groups, verb, resource target, namespace
/// → the bindings that allow it.
pub type Explain<'a> = &'a dyn Fn(&str, &[String], &str, &str, &str) -> Vec<String>;

fn now_second() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn push_unique(v: &mut Vec<String>, s: &str, cap: usize) {
    if !s.is_empty() && !v.iter().any(|x| x == s) && v.len() < cap {
        v.push(s.to_string());
    }
}

impl AccessMap {
    /// Count one request.
    pub fn record(&self, a: Access) {
        let now = Instant::now();
        let second = now_second();
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !m.identities.contains_key(&a.identity) && m.identities.len() >= MAX_IDENTITIES {
            evict_oldest(&mut m.identities, |i| i.last);
        }
        let id = m.identities.entry(a.identity.clone()).or_default();
        if id.groups.is_empty() {
            id.groups = a.groups.iter().take(16).cloned().collect();
        }
        push_unique(&mut id.methods, &a.method, 4);
        for v in &a.via {
            push_unique(&mut id.via, v, 4);
        }
        push_unique(&mut id.sources, &a.source, 4);
        id.total += 1;
        if a.allowed == Some(false) {
            id.denied += 1;
        }
        id.last = Some(now);
        let key = (a.identity.clone(), a.target.clone(), a.namespace.clone());
        if !m.edges.contains_key(&key) && m.edges.len() >= MAX_EDGES {
            evict_oldest(&mut m.edges, |e| e.last);
        }
        let e = m.edges.entry(key).or_default();
        push_unique(&mut e.verbs, &a.verb, 12);
        match a.allowed {
            Some(false) => {
                e.denied += 1;
                e.last_denial = Some(a.reason.clone());
            }
            _ => e.allowed += 1,
        }
        let slot = (second as usize) % RATE_WINDOW;
        if e.bucket_second[slot] != second {
            e.bucket_second[slot] = second;
            e.buckets[slot] = 0;
        }
        e.buckets[slot] += 1;
        e.last = Some(now);
        let stamp = time_text(SystemTime::now());
        let decision = match a.allowed {
            Some(true) => "allow",
            Some(false) => "forbid",
            None => "-",
        };
        e.recent.push_back(format!(
            "{stamp} {} {} {} {decision} via {}{}",
            a.code,
            a.verb,
            a.uri,
            a.method,
            a.via.iter().map(|v| format!(", {v}")).collect::<String>()
        ));
        while e.recent.len() > RECENT {
            e.recent.pop_front();
        }
    }

    /// The counts as JSON: `identities` and `edges` (busiest first).
    pub fn to_json(&self, paths: &Paths, explain: Explain<'_>) -> Value {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let second = now_second();
        let identities: Vec<Value> = m
            .identities
            .iter()
            .map(|(name, i)| {
                json!({"name": name, "groups": i.groups, "methods": i.methods, "via": i.via, "sources": i.sources,
                       "from": i.sources.iter().map(|s| origin(s, paths)).collect::<Vec<_>>(), "requests": i.total, "denied": i.denied})
            })
            .collect();
        let mut edges: Vec<(&EdgeKey, &Edge)> = m.edges.iter().collect();
        edges.sort_by(|a, b| (b.1.allowed + b.1.denied).cmp(&(a.1.allowed + a.1.denied)).then(a.0.cmp(b.0)));
        let edges: Vec<Value> = edges
            .into_iter()
            .map(|((who, target, ns), e)| {
                let groups = m.identities.get(who).map(|i| i.groups.clone()).unwrap_or_default();
                json!({"identity": who, "target": target, "namespace": ns, "verbs": e.verbs, "allowed": e.allowed, "denied": e.denied,
                       "ratePerSecond": rate(e, second), "lastDenial": e.last_denial, "recent": e.recent,
                       "allowedBy": e.verbs.iter().flat_map(|v| explain(who, &groups, v, target, ns)).collect::<std::collections::BTreeSet<_>>()})
            })
            .collect();
        json!({"identities": identities, "edges": edges,
               "services": paths.services.iter().map(|(entry, svc, n)| json!({"entry": entry, "service": svc, "readyEndpoints": n})).collect::<Vec<_>>(),
               "apiService": paths.api_service})
    }

    /// The map as a standalone SVG.
    pub fn svg(&self, paths: &Paths, explain: Explain<'_>) -> String {
        let data = self.to_json(paths, explain);
        render(&data)
    }
}

fn evict_oldest<V>(map: &mut HashMap<impl Clone + Eq + std::hash::Hash, V>, last: impl Fn(&V) -> Option<Instant>) {
    if let Some(k) = map.iter().min_by_key(|(_, v)| last(v)).map(|(k, _)| k.clone()) {
        map.remove(&k);
    }
}

fn rate(e: &Edge, second: u64) -> f64 {
    let n: u32 = (0..RATE_WINDOW).filter(|&i| second.saturating_sub(e.bucket_second[i]) < RATE_WINDOW as u64).map(|i| e.buckets[i]).sum();
    f64::from(n) / RATE_WINDOW as f64
}

fn origin(source: &str, paths: &Paths) -> String {
    match paths.pods_by_ip.get(source) {
        Some(pod) if !paths.api_service.is_empty() => format!("pod {pod} via Service kubernetes ({})", paths.api_service),
        Some(pod) => format!("pod {pod}"),
        None => format!("host {source}"),
    }
}

fn time_text(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("{h:02}:{m:02}:{sec:02}Z")
}

/// XML-escapes text for content and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

const LEFT_X: i64 = 20;
const NODE_W: i64 = 300;
const API_X: i64 = 400;
const API_W: i64 = 180;
const RIGHT_X: i64 = 820;
const TOP: i64 = 70;
const ROW: i64 = 56;
/// Vertical room per edge arriving at a target (each ends at its own height, its label
/// just above it).
const EDGE_ROOM: i64 = 14;

fn render(data: &Value) -> String {
    let empty = Vec::new();
    let edges_all = data.get("edges").and_then(Value::as_array).unwrap_or(&empty);
    let edges: Vec<&Value> = edges_all.iter().take(DRAWN_EDGES).collect();
    let identities_all = data.get("identities").and_then(Value::as_array).unwrap_or(&empty);
    // Only identities with a drawn edge, in order of first appearance.
    let mut who: Vec<String> = Vec::new();
    let mut targets: Vec<(String, String)> = Vec::new();
    for e in &edges {
        let w = e.get("identity").and_then(Value::as_str).unwrap_or("").to_string();
        if !who.contains(&w) {
            who.push(w);
        }
        let t = (e.get("target").and_then(Value::as_str).unwrap_or("").to_string(), e.get("namespace").and_then(Value::as_str).unwrap_or("").to_string());
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    who.sort();
    targets.sort();
    let services = data.get("services").and_then(Value::as_array).unwrap_or(&empty);
    // Targets are as tall as the edges arriving at them need.
    let arriving = |t: &(String, String)| {
        edges
            .iter()
            .filter(|e| e.get("target").and_then(Value::as_str) == Some(t.0.as_str()) && e.get("namespace").and_then(Value::as_str) == Some(t.1.as_str()))
            .count() as i64
    };
    let mut target_y = Vec::with_capacity(targets.len());
    let mut target_h = Vec::with_capacity(targets.len());
    let mut y = TOP;
    for t in &targets {
        let h = (arriving(t) * EDGE_ROOM + 16).max(42);
        target_y.push(y);
        target_h.push(h);
        y += h + 14;
    }
    let bottom = y.max(TOP + who.len().max(3) as i64 * ROW);
    let plane_y = bottom + 40;
    let height = plane_y + 50 + (services.len().max(1) as i64) * 36 + 20;
    let width = RIGHT_X + NODE_W + 20;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(s, r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##);
    let _ = write!(s, r##"<text x="{LEFT_X}" y="30" font-size="16" font-weight="bold" fill="#1d2433">Who reaches the API, how, and what they may do</text>"##);
    for (x, label) in [(LEFT_X, "identities (as the API saw them)"), (API_X, "API server"), (RIGHT_X, "what they touched")] {
        let _ = write!(s, r##"<text x="{x}" y="55" fill="#6b7280">{}</text>"##, esc(label));
    }
    let y_of = |i: usize| TOP + i as i64 * ROW;
    let mut arrived = vec![0i64; targets.len()];
    // Edges first, so nodes sit on top of them.
    for e in &edges {
        let w = e.get("identity").and_then(Value::as_str).unwrap_or("");
        let t = (e.get("target").and_then(Value::as_str).unwrap_or("").to_string(), e.get("namespace").and_then(Value::as_str).unwrap_or("").to_string());
        let (Some(wi), Some(ti)) = (who.iter().position(|x| x == w), targets.iter().position(|x| *x == t)) else { continue };
        let y1 = y_of(wi) + 20;
        let y2 = target_y[ti] + 14 + arrived[ti] * EDGE_ROOM;
        arrived[ti] += 1;
        let (allowed, denied) = (num(e, "allowed"), num(e, "denied"));
        let denied_only = allowed == 0 && denied > 0;
        let (stroke, dash) = if denied_only { ("#c0392b", r#" stroke-dasharray="5 3""#) } else { ("#8a94a6", "") };
        let rate = e.get("ratePerSecond").and_then(Value::as_f64).unwrap_or(0.0);
        let widthpx = (1.0 + (allowed + denied) as f64).log10().clamp(1.0, 5.0);
        let verbs = strs(e, "verbs").join(",");
        let mut detail = format!(
            "{w} → {} {}\nverbs: {verbs}\nallowed: {allowed}, denied: {denied}, rate: {rate:.1}/s\n",
            t.0,
            if t.1.is_empty() { "(cluster scope)".to_string() } else { format!("in {}", t.1) }
        );
        if let Some(d) = e.get("lastDenial").and_then(Value::as_str) {
            let _ = writeln!(detail, "last denial: {d}");
        }
        let by = strs(e, "allowedBy");
        if !by.is_empty() {
            let _ = writeln!(detail, "RBAC allowing it:\n  {}", by.join("\n  "));
        } else if denied > 0 {
            let _ = writeln!(detail, "RBAC: no binding allows it");
        }
        let _ = writeln!(detail, "recent requests:\n  {}", strs(e, "recent").join("\n  "));
        let title = format!("{w} → {}", t.0);
        let _ = write!(
            s,
            r##"<g class="edge-group" data-title="{}" data-detail="{}"><path class="edge{}" d="M{} {y1} C{} {y1} {} {} {API_X} {} M{} {} C{} {} {} {y2} {RIGHT_X} {y2}" stroke="{stroke}" stroke-width="{widthpx:.1}" fill="none"{dash}/>"##,
            esc(&title),
            esc(&detail),
            if denied_only { " denied" } else { "" },
            LEFT_X + NODE_W,
            LEFT_X + NODE_W + 60,
            API_X - 60,
            TOP + 20 + (y1 - TOP) / 3,
            TOP + 20 + (y1 - TOP) / 3,
            API_X + API_W,
            TOP + 20 + (y2 - TOP) / 3,
            API_X + API_W + 40,
            TOP + 20 + (y2 - TOP) / 3,
            RIGHT_X - 40,
        );
        let short = w.rsplit(':').next().unwrap_or(w);
        let label = if denied > 0 {
            format!("{short}: {verbs} · {allowed} ok · {denied} denied · {rate:.1}/s")
        } else {
            format!("{short}: {verbs} · {allowed} · {rate:.1}/s")
        };
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" fill="{}">{}</text></g>"##,
            RIGHT_X - 205,
            y2 - 2,
            if denied > 0 { "#c0392b" } else { "#4b5563" },
            esc(&clip(&label, 36))
        );
    }
    // Identities.
    for (i, w) in who.iter().enumerate() {
        let y = y_of(i);
        let info = identities_all.iter().find(|x| x.get("name").and_then(Value::as_str) == Some(w));
        let methods = info.map(|x| strs(x, "methods")).unwrap_or_default();
        let via = info.map(|x| strs(x, "via")).unwrap_or_default();
        let from = info.map(|x| strs(x, "from")).unwrap_or_default();
        let mut how = methods.join(", ");
        if !via.is_empty() {
            how = format!("{how} via {}", via.join(", "));
        }
        let detail = format!(
            "{w}\ngroups: {}\nauthenticated by: {}\nfrom: {}\nrequests: {}, denied: {}",
            info.map(|x| strs(x, "groups").join(", ")).unwrap_or_default(),
            how,
            from.join("; "),
            info.map(|x| num(x, "requests")).unwrap_or(0),
            info.map(|x| num(x, "denied")).unwrap_or(0)
        );
        let _ = write!(
            s,
            r##"<g class="node identity" data-title="{}" data-detail="{}"><rect x="{LEFT_X}" y="{y}" width="{NODE_W}" height="42" rx="6" fill="#eef2fa" stroke="#6b7690"/><text x="{}" y="{}" font-weight="bold" fill="#1d2433">{}</text><text x="{}" y="{}" font-size="10" fill="#4b5563">{}</text></g>"##,
            esc(w),
            esc(&detail),
            LEFT_X + 8,
            y + 16,
            esc(&clip(w, 44)),
            LEFT_X + 8,
            y + 32,
            esc(&clip(&format!("{how} · {}", from.first().cloned().unwrap_or_default()), 58)),
        );
    }
    // The API server and its stages.
    let api_h = bottom - TOP - 14;
    let _ = write!(s, r##"<g class="node stage"><rect x="{API_X}" y="{TOP}" width="{API_W}" height="{api_h}" rx="8" fill="#1d2433" stroke="#1d2433"/>"##);
    for (k, stage) in ["kube-apiserver (nanokube)", "1 authentication", "2 authorization (RBAC)", "3 admission", "4 registry → store"].iter().enumerate() {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" fill="#ffffff"{}>{}</text>"##,
            API_X + 12,
            TOP + 24 + k as i64 * 22,
            if k == 0 { r#" font-weight="bold""# } else { "" },
            esc(stage)
        );
    }
    s.push_str("</g>");
    // Targets.
    for (i, (t, ns)) in targets.iter().enumerate() {
        let (y, h) = (target_y[i], target_h[i]);
        let label = if ns.is_empty() { t.clone() } else { format!("{t} · {ns}") };
        let _ = write!(
            s,
            r##"<g class="node target" data-title="{}" data-detail="{}"><rect x="{RIGHT_X}" y="{y}" width="{NODE_W}" height="{h}" rx="6" fill="#f3f6ea" stroke="#6b7690"/><text x="{}" y="{}" fill="#1d2433">{}</text></g>"##,
            esc(&label),
            esc(&format!("{t}\nnamespace: {}", if ns.is_empty() { "(cluster scope)" } else { ns })),
            RIGHT_X + 8,
            y + 18,
            esc(&clip(&label, 44)),
        );
    }
    // The data plane: how traffic reaches pods.
    let _ = write!(s, r##"<text x="{LEFT_X}" y="{plane_y}" font-size="14" font-weight="bold" fill="#1d2433">Traffic into pods</text>"##);
    if let Some(api) = data.get("apiService").and_then(Value::as_str).filter(|a| !a.is_empty()) {
        let _ = write!(s, r##"<text x="{}" y="{plane_y}" fill="#4b5563">pods reach the API at Service kubernetes ({})</text>"##, LEFT_X + 150, esc(api));
    }
    if services.is_empty() {
        let _ = write!(s, r##"<text x="{LEFT_X}" y="{}" fill="#6b7280">no NodePort or LoadBalancer Services</text>"##, plane_y + 30);
    }
    for (k, svc) in services.iter().enumerate() {
        let y = plane_y + 20 + k as i64 * 36;
        let entry = svc.get("entry").and_then(Value::as_str).unwrap_or("");
        let name = svc.get("service").and_then(Value::as_str).unwrap_or("");
        let ready = num(svc, "readyEndpoints");
        for (x, w, text, fill) in [
            (LEFT_X, NODE_W, entry.to_string(), "#eef2fa"),
            (API_X, API_W, name.to_string(), "#fdf3e1"),
            (RIGHT_X, NODE_W, format!("{ready} ready endpoint(s)"), "#f3f6ea"),
        ] {
            let _ = write!(
                s,
                r##"<rect x="{x}" y="{y}" width="{w}" height="28" rx="5" fill="{fill}" stroke="#6b7690"/><text x="{}" y="{}" fill="#1d2433">{}</text>"##,
                x + 8,
                y + 18,
                esc(&clip(&text, 44))
            );
        }
        let _ = write!(s, r##"<path d="M{} {} H{API_X} M{} {} H{RIGHT_X}" stroke="#8a94a6" fill="none"/>"##, LEFT_X + NODE_W, y + 14, API_X + API_W, y + 14);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(who: &str, target: &str, allowed: bool) -> Access {
        Access {
            identity: who.into(),
            method: "static token".into(),
            verb: "get".into(),
            target: target.into(),
            namespace: "default".into(),
            allowed: Some(allowed),
            code: if allowed { 200 } else { 403 },
            reason: if allowed { String::new() } else { "RBAC: nope".into() },
            uri: "/api/v1/namespaces/default/pods".into(),
            source: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_edges_and_denials() {
        let m = AccessMap::default();
        m.record(access("alice", "pods", true));
        m.record(access("alice", "pods", true));
        m.record(access("bob", "secrets", false));
        let none = |_: &str, _: &[String], _: &str, _: &str, _: &str| Vec::new();
        let j = m.to_json(&Paths::default(), &none);
        let edges = j["edges"].as_array().expect("edges");
        assert_eq!(edges.len(), 2);
        assert_eq!(edges[0]["identity"], "alice");
        assert_eq!(edges[0]["allowed"], 2);
        assert_eq!(edges[1]["lastDenial"], "RBAC: nope");
        let svg = m.svg(&Paths::default(), &none);
        assert!(svg.starts_with("<svg") && svg.contains("alice") && svg.contains("stroke-dasharray"));
    }

    #[test]
    fn bounded_and_escaped() {
        let m = AccessMap::default();
        for i in 0..(MAX_EDGES + 50) {
            m.record(access("<script>", &format!("r{i}"), true));
        }
        let none = |_: &str, _: &[String], _: &str, _: &str, _: &str| Vec::new();
        assert_eq!(m.to_json(&Paths::default(), &none)["edges"].as_array().map(Vec::len), Some(MAX_EDGES));
        let svg = m.svg(&Paths::default(), &none);
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"));
    }
}
