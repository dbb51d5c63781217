//! The request path: authenticate → request info → authorize → route → encode.
//! Non-resource endpoints (health, version, discovery, OpenAPI) and the resource verbs
//! (get, list, watch, create, update, patch, delete, deletecollection, status, scale,
//! finalize) live here; what happens to objects lives in [`crate::registry`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::selector::{FieldSelector, LabelSelector};
use nanokube_api::{meta, ApiError};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::authn::UserInfo;
use crate::authz::{forbidden_message, Decision};
use crate::http::{self as h, Body, Output};
use crate::patch::{self, PatchType};
use crate::registry::{DeleteOptions, Deleted, ListOptions, Obj, WriteOptions};
use crate::request::{self, RequestInfo};
use crate::reviews;
use crate::server::{ApiServer, ConnInfo};
use crate::tables::{Include, TableSpec};

/// Largest request body accepted, as upstream (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Parsed query parameters (last value wins; `all` keeps repeats).
pub struct Query {
    map: HashMap<String, String>,
    raw: String,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let map = form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect();
        Query { map, raw: q.unwrap_or("").to_string() }
    }
    /// Every value of a repeated parameter, in order (`command=sh&command=-c`).
    pub fn all(&self, k: &str) -> Vec<String> {
        form_urlencoded::parse(self.raw.as_bytes()).filter(|(key, _)| key == k).map(|(_, v)| v.into_owned()).collect()
    }
    /// The query as sent.
    pub fn raw(&self) -> &str {
        &self.raw
    }
    /// A parameter.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }
    /// A boolean parameter as upstream converts it (`runtime.Convert_Slice_string_To_bool`):
    /// absent is false, `0` and `false` (any case) are false, anything else is true
    /// (`watch=True`, as the Python client sends, and `watch=` alike).
    pub fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(|v| !(v == "0" || v.eq_ignore_ascii_case("false")))
    }
}

/// What the audit event of a request records, filled in as the request is served.
#[derive(Default)]
pub struct AuditInfo {
    user: Option<UserInfo>,
    impersonated: Option<UserInfo>,
    info: Option<RequestInfo>,
    decision: Option<&'static str>,
    /// The authorizers' reason (`authorization.k8s.io/reason`), made only for the audit log.
    reason: Option<String>,
    denial: Option<String>,
    /// Who wrote, for the audit annotations admission added.
    requester: Option<Arc<crate::admission::Requester>>,
    /// What API Priority and Fairness classified the request as.
    flow: Option<crate::priority_and_fairness::Classification>,
}

/// Serve one request.
pub async fn handle(server: Arc<ApiServer>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<Body> {
    let audit_id = uuid::Uuid::new_v4().to_string();
    let received = OffsetDateTime::now_utc();
    let request_uri = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let user_agent = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // As upstream: X-Forwarded-For hops first, then the peer, without repeats.
    let mut source_ips: Vec<String> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|ip| ip.trim().to_string())
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .collect();
    source_ips.push(conn.peer.ip().to_string());
    let (sent_authorization, forwarded) = (req.headers().contains_key(http::header::AUTHORIZATION), req.headers().contains_key("x-forwarded-for"));
    let mut seen = std::collections::HashSet::new();
    source_ips.retain(|ip| seen.insert(ip.clone()));
    let mut audit = AuditInfo::default();
    let mutating = crate::lanes::is_mutating(req.method());
    // Counted for `apiserver_current_inflight_requests`; limits are API Priority and
    // Fairness's, per priority level (inside `handle_inner`).
    let inflight = server.metrics.inflight(mutating);
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let mut request_body = Some(body);
    let mut resp = match handle_inner(&server, &conn, parts, &mut request_body, &mut audit).await {
        Ok(r) => r,
        Err(e) => h::error(&e),
    };
    drop(inflight);
    if let Some(flow) = &audit.flow {
        flow.set_headers(resp.headers_mut());
    }
    // A body answered before it was read (401, 403, 429...) is read first, briefly and
    // up to a bound, then kept until the answer is sent: an HTTP/2 stream whose request
    // body is dropped unread is reset with CANCEL, and clients such as curl then report
    // a framing error instead of the answer.
    if let Some(mut unread) = request_body.take() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain_unread(&mut unread)).await;
        resp = resp.map(|b| h::holding(b, unread));
    }
    if let Some(info) = &audit.info {
        let known = info.is_resource && server.registry.resources().find(&info.group, &info.version, &info.resource).is_some();
        server.metrics.record(info, known, resp.status().as_u16(), started.elapsed().as_secs_f64());
    }
    if let Ok(v) = HeaderValue::from_str(&audit_id) {
        resp.headers_mut().insert("audit-id", v);
    }
    resp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    if let Some(info) = &audit.info {
        crate::access_map::record(
            &server,
            crate::access_map::Served {
                user: audit.user.as_ref(),
                impersonated: audit.impersonated.as_ref(),
                info,
                allowed: audit.decision.map(|d| d == "allow"),
                reason: audit.denial.as_deref(),
                certificate: conn.cert_user.is_some(),
                sent_authorization,
                forwarded,
                uri: &request_uri,
                source: source_ips.first().map(String::as_str).unwrap_or(""),
                code: resp.status().as_u16(),
            },
        );
    }
    if let Some(log) = &server.audit {
        let info = audit.info.unwrap_or_default();
        let streaming = info.verb == "watch";
        let mut ev = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id,
            "stage": if streaming { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": request_uri, "verb": info.verb,
            "user": audit.user.as_ref().map(UserInfo::to_json).unwrap_or(json!({})),
            "sourceIPs": source_ips, "userAgent": user_agent,
            "responseStatus": {"metadata": {}, "code": resp.status().as_u16()},
            "requestReceivedTimestamp": meta::format_micro_time(received),
            "stageTimestamp": meta::format_micro_time(OffsetDateTime::now_utc()),
        });
        if let Some(u) = &audit.impersonated {
            ev["impersonatedUser"] = u.to_json();
        }
        if info.is_resource {
            let mut r = json!({"resource": info.resource, "apiVersion": info.version});
            for (k, v) in [("namespace", &info.namespace), ("name", &info.name), ("apiGroup", &info.group), ("subresource", &info.subresource)] {
                if !v.is_empty() {
                    r[k] = json!(v);
                }
            }
            ev["objectRef"] = r;
        }
        let mut annotations = serde_json::Map::new();
        if let Some(d) = audit.decision {
            annotations.insert("authorization.k8s.io/decision".into(), json!(d));
        }
        if let Some(r) = &audit.reason {
            annotations.insert("authorization.k8s.io/reason".into(), json!(r));
        }
        for (k, v) in audit.requester.as_ref().map(|r| r.audit_annotations()).unwrap_or_default() {
            annotations.insert(k, json!(v));
        }
        if !annotations.is_empty() {
            ev["annotations"] = Value::Object(annotations);
        }
        log.record(&ev);
    }
    resp
}

/// Apply `Impersonate-*` headers: each impersonated attribute needs the `impersonate`
/// verb on users, groups, serviceaccounts, uids or userextras.
fn impersonate(server: &ApiServer, requester: &UserInfo, headers: &HeaderMap) -> Result<Option<UserInfo>, ApiError> {
    let get_all = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok().map(String::from)).collect::<Vec<_>>();
    let user = headers.get("impersonate-user").and_then(|v| v.to_str().ok()).map(String::from);
    let groups = get_all("impersonate-group");
    let uid = headers.get("impersonate-uid").and_then(|v| v.to_str().ok()).map(String::from);
    let mut extras: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in headers.iter() {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_decode(key);
            extras.entry(key).or_default().push(v.to_str().unwrap_or("").to_string());
        }
    }
    let Some(user) = user else {
        if !groups.is_empty() || uid.is_some() || !extras.is_empty() {
            return Err(ApiError::bad_request("requested impersonation of groups, uid or extra fields without impersonating a user"));
        }
        return Ok(None);
    };
    let check = |group: &str, resource: &str, subresource: &str, namespace: &str, name: &str| -> Result<(), ApiError> {
        let req = RequestInfo {
            is_resource: true,
            verb: "impersonate".into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        };
        match server.authz.authorize(requester, &req) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(ApiError::forbidden(forbidden_message(requester, &req, &reason))),
            Decision::NoOpinion(reason) => Err(ApiError::forbidden(forbidden_message(requester, &req, &reason))),
        }
    };
    let mut out_groups = groups.clone();
    if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
        let (ns, name) = rest.split_once(':').unwrap_or(("", rest));
        check("", "serviceaccounts", "", ns, name)?;
        if groups.is_empty() {
            out_groups = vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}")];
        }
    } else {
        check("", "users", "", "", &user)?;
    }
    for g in &groups {
        check("", "groups", "", "", g)?;
    }
    if let Some(u) = &uid {
        check("authentication.k8s.io", "uids", "", "", u)?;
    }
    for (k, vs) in &extras {
        for v in vs {
            check("authentication.k8s.io", "userextras", k, "", v)?;
        }
    }
    if user == "system:anonymous" {
        if !out_groups.iter().any(|g| g == crate::authn::UNAUTHENTICATED) {
            out_groups.push(crate::authn::UNAUTHENTICATED.into());
        }
    } else if !out_groups.iter().any(|g| g == crate::authn::AUTHENTICATED) {
        out_groups.push(crate::authn::AUTHENTICATED.into());
    }
    Ok(Some(UserInfo { name: user, uid: uid.unwrap_or_default(), groups: out_groups, extra: extras }))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            // Hex digits are ASCII: decode from bytes, so a multi-byte character after
            // a `%` is kept as it is instead of being sliced through.
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = (hi * 16 + lo) as u8;
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle_inner(
    server: &Arc<ApiServer>,
    conn: &ConnInfo,
    mut parts: http::request::Parts,
    body: &mut Option<Incoming>,
    audit: &mut AuditInfo,
) -> Result<Response<Body>, ApiError> {
    // Go serves the decoded path (`r.URL.Path`): clients that escape names (the Python
    // client sends `system%3Anode`) reach the same object as those that do not.
    let session_conn;
    let conn = if crate::dashboard::is_dashboard_path(parts.uri.path()) {
        match crate::dashboard::route(server, &mut parts, body).await? {
            crate::dashboard::Routed::Answer(r) => return Ok(r),
            crate::dashboard::Routed::Api => {
                session_conn = ConnInfo { cert_user: None, ..conn.clone() };
                &session_conn
            }
        }
    } else {
        conn
    };
    let path = if parts.uri.path().contains('%') { percent_decode(parts.uri.path()) } else { parts.uri.path().to_string() };
    let query = Query::parse(parts.uri.query());
    // A credential that is not text is a bad credential (401), not an absent one.
    let authorization = match parts.headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| ApiError::unauthorized())?),
    };
    let watch = query.flag("watch");
    let mut info = request::parse(parts.method.as_str(), &path, watch);
    if matches!(info.verb.as_str(), "list" | "watch" | "deletecollection") {
        info.field_selector = query.get("fieldSelector").unwrap_or("").to_string();
    }
    audit.info = Some(info.clone());
    let user = server.authn.authenticate(conn.cert_user.as_ref(), authorization)?;
    audit.user = Some(user.clone());
    let user = match impersonate(server, &user, &parts.headers)? {
        Some(u) => {
            audit.impersonated = Some(u.clone());
            u
        }
        None => user,
    };
    // API Priority and Fairness, between impersonation and authorization as upstream;
    // the seat is held until this returns (a watch: until its response starts).
    let _seat = if crate::priority_and_fairness::is_long_running(&info) {
        None
    } else {
        match server.flow_control.admit(&user, &info).await {
            crate::priority_and_fairness::Admission::Run(flow, seat) => {
                audit.flow = Some(flow);
                seat
            }
            crate::priority_and_fairness::Admission::Rejected(flow, retry_after) => {
                audit.flow = Some(flow);
                return Ok(crate::priority_and_fairness::too_many_requests(retry_after));
            }
        }
    };
    let decision = server.authz.authorize(&user, &info);
    audit.decision = Some(if decision == Decision::Allow { "allow" } else { "forbid" });
    if server.audit.is_some() {
        audit.reason = Some(match &decision {
            // system:masters and the Node authorizer allow without a reason, as upstream's.
            Decision::Allow if user.in_group(crate::authn::SYSTEM_MASTERS) => String::new(),
            Decision::Allow => server.rbac.allow_reason(&user, &info).unwrap_or_default(),
            Decision::Deny(r) | Decision::NoOpinion(r) => r.clone(),
        });
    }
    if decision != Decision::Allow {
        let (Decision::Deny(reason) | Decision::NoOpinion(reason)) = decision else { unreachable!("allowed requests do not get here") };
        let mut e = ApiError::forbidden(forbidden_message(&user, &info, &reason));
        audit.denial = Some(e.message.clone());
        if info.is_resource {
            e.details.name = (!info.name.is_empty()).then(|| info.name.clone());
            e.details.kind = Some(info.resource.clone());
            e.details.group = (!info.group.is_empty()).then(|| info.group.clone());
        }
        return Err(e);
    }
    // A group-version another server serves (an APIService with a Service): proxied,
    // discovery included, after this server's authentication and authorization.
    if let Some(apiservice) = server.aggregator.backend_for(&server.registry, &path) {
        let body = read_body(body.take().ok_or_else(|| ApiError::internal("request body read twice"))?, &parts.headers).await?;
        return server.aggregator.proxy(&server.registry, &apiservice, &user, &parts, body).await;
    }
    if !info.is_resource {
        return non_resource(server, &parts.method, &path, &query, parts.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()));
    }
    let body = read_body(body.take().ok_or_else(|| ApiError::internal("request body read twice"))?, &parts.headers).await?;
    let permission: crate::admission::Permission = {
        let (server, user) = (server.clone(), user.clone());
        Arc::new(move |req: &RequestInfo| server.authz.authorize(&user, req) == Decision::Allow)
    };
    let requester = Arc::new(crate::admission::Requester::new(user.clone()).with_permission(permission));
    audit.requester = Some(requester.clone());
    let upgrade = std::sync::Mutex::new(parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let ctx = Ctx { server, conn, user: &user, info: &info, query: &query, headers: &parts.headers, method: &parts.method, requester, upgrade };
    ctx.resource(body).await
}

/// Reads (and drops) what is left of a request body answered without it, up to 1 MiB.
async fn drain_unread(body: &mut Incoming) {
    let mut left = 1usize << 20;
    while let Some(Ok(frame)) = body.frame().await {
        let n = frame.data_ref().map_or(0, |d| d.len());
        if n >= left {
            return;
        }
        left -= n;
    }
}

/// Most bytes of an oversized body read (and dropped) before answering 413, so HTTP/2
/// clients get the answer rather than a reset stream.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

async fn read_body(body: Incoming, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    read_body_within(body, headers, MAX_BODY).await
}

/// A request body of at most `limit` bytes (413 beyond, after draining up to
/// [`MAX_DRAIN`] so HTTP/2 clients get the answer).
pub(crate) async fn read_body_within(mut body: Incoming, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("Request entity too large: limit is {limit}"));
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_DRAIN) {
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("error reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > MAX_DRAIN {
                return Err(too_large());
            }
            if total <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > limit {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// A discovery document, its fields in upstream's order.
fn discovery_json(doc: &Value) -> Response<Body> {
    h::json_bytes(StatusCode::OK, "application/json", Bytes::from(crate::discovery::to_bytes(doc)))
}

fn non_resource(server: &ApiServer, method: &Method, path: &str, query: &Query, accept: Option<&str>) -> Result<Response<Body>, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource: {method} {path}")));
    }
    let path = path.trim_end_matches('/');
    match path {
        "/healthz" | "/livez" | "/readyz" => {
            let checks: &[&str] = match path {
                "/readyz" => &["ping", "log", "etcd", "informer-sync", "poststarthook/bootstrap-controller", "shutdown"],
                _ => &["ping", "log", "etcd"],
            };
            // The checks that fail: the store (`etcd`, as upstream names its storage
            // check) when it can no longer write, and the bootstrap hook until ready.
            let store_ok = server.registry.store().healthy().is_ok();
            let failing = |c: &str| match c {
                "etcd" => !store_ok,
                "poststarthook/bootstrap-controller" => path == "/readyz" && !server.is_ready(),
                _ => false,
            };
            let ok = !checks.iter().any(|c| failing(c));
            if !ok || query.get("verbose").is_some() {
                let mut body = String::new();
                for c in checks {
                    body.push_str(&if failing(c) { format!("[-]{c} failed: reason withheld\n") } else { format!("[+]{c} ok\n") });
                }
                body.push_str(&format!("{} check {}\n", &path[1..], if ok { "passed" } else { "failed" }));
                return Ok(h::text(if ok { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR }, body));
            }
            Ok(h::text(StatusCode::OK, "ok"))
        }
        p if p == "/livez/etcd" || p == "/readyz/etcd" || p == "/healthz/etcd" => match server.registry.store().healthy() {
            Ok(()) => Ok(h::text(StatusCode::OK, "ok")),
            Err(_) => Ok(h::text(StatusCode::INTERNAL_SERVER_ERROR, "[-]etcd failed: reason withheld\n".to_string())),
        },
        p if p.starts_with("/healthz/") || p.starts_with("/livez/") || p.starts_with("/readyz/") => Ok(h::text(StatusCode::OK, "ok")),
        "/version" => Ok(h::json(StatusCode::OK, &crate::discovery::version())),
        "/access-map" => {
            let (content_type, body) = crate::access_map::serve(server, query.get("format") == Some("svg"));
            Ok(h::bytes_response(StatusCode::OK, content_type, Bytes::from(body)))
        }
        "/metrics" => Ok(h::bytes_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(server.metrics.render(server.registry.store().as_ref(), server.registry.resources())),
        )),
        "/.well-known/openid-configuration" => match &server.tokens {
            Some(t) => Ok(h::json(StatusCode::OK, &t.openid_configuration(&server.server_url))),
            None => Err(ApiError::path_not_found()),
        },
        "/openid/v1/jwks" => match &server.tokens {
            Some(t) => Ok(h::bytes_response(StatusCode::OK, "application/jwk-set+json", Bytes::from(serde_json::to_vec(&t.jwks()).expect("serialize")))),
            None => Err(ApiError::path_not_found()),
        },
        "/api" | "/apis" => {
            let core = path == "/api";
            for m in h::media_ranges(accept.unwrap_or("")) {
                if m.mime == "application/json" && m.as_ == "APIGroupDiscoveryList" && m.g == "apidiscovery.k8s.io" && (m.v == "v2" || m.v == "v2beta1") {
                    let mut doc = crate::discovery::aggregated(server.registry.resources(), core, m.v);
                    if !core {
                        if let Some(items) = doc["items"].as_array_mut() {
                            items.extend(server.aggregator.aggregated_groups(&server.registry));
                        }
                    }
                    let ct = format!("application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList", m.v);
                    let mut r = h::json_bytes(StatusCode::OK, &ct, Bytes::from(crate::discovery::to_bytes(&doc)));
                    r.headers_mut().insert(http::header::VARY, HeaderValue::from_static("Accept"));
                    return Ok(r);
                }
            }
            let mut r = if core {
                discovery_json(&crate::discovery::api_versions(&server.server_address))
            } else {
                let mut list = crate::discovery::api_group_list(server.registry.resources());
                if let Some(groups) = list["groups"].as_array_mut() {
                    groups.extend(server.aggregator.groups(&server.registry));
                }
                discovery_json(&list)
            };
            r.headers_mut().insert(http::header::VARY, HeaderValue::from_static("Accept"));
            Ok(r)
        }
        "/api/v1" => {
            crate::discovery::api_resource_list(server.registry.resources(), "", "v1").map(|v| discovery_json(&v)).ok_or_else(ApiError::path_not_found)
        }
        p if p.starts_with("/apis/") => {
            let segs: Vec<&str> = p["/apis/".len()..].split('/').collect();
            let doc = match segs.as_slice() {
                [g] => crate::discovery::api_group(server.registry.resources(), g).or_else(|| {
                    server.aggregator.groups(&server.registry).into_iter().find(|e| e["name"] == *g).map(|mut e| {
                        e["kind"] = json!("APIGroup");
                        e["apiVersion"] = json!("v1");
                        e
                    })
                }),
                [g, v] => crate::discovery::api_resource_list(server.registry.resources(), g, v),
                _ => None,
            };
            doc.map(|v| discovery_json(&v)).ok_or_else(ApiError::path_not_found)
        }
        "/openapi/v2" | "/swagger-2.0.0.pb-v1" => {
            let wants_proto = path == "/swagger-2.0.0.pb-v1" || accept.is_some_and(|a| a.contains("protobuf"));
            if wants_proto {
                // Upstream serves it with http.ServeContent, which sniffs binary as octet-stream;
                // client-go cannot parse the "@" in the protobuf media type name.
                Ok(h::bytes_response(StatusCode::OK, "application/octet-stream", server.openapi.v2_protobuf(server.registry.resources())))
            } else {
                Ok(h::bytes_response(StatusCode::OK, "application/json", server.openapi.v2_json(server.registry.resources())))
            }
        }
        "/openapi/v3" => Ok(h::bytes_response(StatusCode::OK, "application/json", server.openapi.root(server.registry.resources()))),
        p if p.starts_with("/openapi/v3/") => {
            let key = &p["/openapi/v3/".len()..];
            let (hash, doc) = server.openapi.document(server.registry.resources(), key).ok_or_else(ApiError::path_not_found)?;
            match query.get("hash") {
                Some(h) if h != hash => {
                    let mut r = h::text(StatusCode::MOVED_PERMANENTLY, "");
                    if let Ok(v) = HeaderValue::from_str(&format!("/openapi/v3/{key}?hash={hash}")) {
                        r.headers_mut().insert(http::header::LOCATION, v);
                    }
                    Ok(r)
                }
                Some(_) => {
                    let mut r = h::bytes_response(StatusCode::OK, "application/json", doc);
                    r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("public, immutable"));
                    Ok(r)
                }
                None => Ok(h::bytes_response(StatusCode::OK, "application/json", doc)),
            }
        }
        "" => {
            let mut paths = vec![
                "/api".to_string(),
                "/api/v1".into(),
                "/apis".into(),
                "/healthz".into(),
                "/livez".into(),
                "/readyz".into(),
                "/version".into(),
                "/openapi/v3".into(),
            ];
            let table = server.registry.resources();
            for g in table.groups() {
                paths.push(format!("/apis/{g}"));
                for v in table.versions(g) {
                    paths.push(format!("/apis/{g}/{v}"));
                }
            }
            paths.sort();
            Ok(h::json(StatusCode::OK, &json!({"paths": paths})))
        }
        _ => Err(ApiError::path_not_found()),
    }
}

struct Ctx<'a> {
    server: &'a Arc<ApiServer>,
    conn: &'a ConnInfo,
    user: &'a UserInfo,
    info: &'a RequestInfo,
    query: &'a Query,
    headers: &'a HeaderMap,
    method: &'a Method,
    /// The user for admission, collecting the warnings webhooks and policies give.
    requester: Arc<crate::admission::Requester>,
    /// The connection's upgrade (exec), taken once.
    upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

/// A list (`PartialObjectMetadataList`, or any kind's list as YAML) as written.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListOut<'a> {
    api_version: String,
    items: EachObject<'a>,
    kind: String,
    metadata: Value,
}

/// The sequence of what `each` makes of every object (a JSON array, a YAML list), made one
/// object at a time as it is serialized: each object is decoded for its element and let
/// go, so a list of 100,000 never holds 100,000 decoded trees (a Table of 100,000
/// ConfigMaps did: ~2 GB).
struct EachObject<'a> {
    objs: &'a [Obj],
    each: &'a dyn Fn(&Value) -> Value,
}

impl serde::Serialize for EachObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.objs.len()))?;
        for o in self.objs {
            seq.serialize_element(&o.with_value(self.each))?;
        }
        seq.end()
    }
}

fn list_metadata(rv: i64, cont: Option<&str>, remaining: Option<usize>) -> Value {
    let mut m = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        m["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        m["remainingItemCount"] = json!(r);
    }
    m
}

impl Ctx<'_> {
    fn accept(&self) -> Option<&str> {
        self.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok())
    }

    fn content_type(&self) -> &str {
        self.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json")
    }

    /// The options of a write this request makes: its dry run, the subresource written,
    /// and its requester for admission.
    fn write_options(&self, subresource: Option<&str>) -> Result<WriteOptions, ApiError> {
        Ok(WriteOptions { dry_run: self.dry_run()?, subresource: subresource.map(String::from), requester: Some(self.requester.clone()) })
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.query.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("dryRun: Unsupported value: {other:?}: supported values: \"All\""))),
        }
    }

    /// `fieldValidation`: Strict (400 on unknown fields), Warn (Warning headers) or Ignore
    /// (drop them). kubectl sends Strict unless told otherwise; no parameter means Warn,
    /// as upstream defaults. Unknown fields are found from the kind's generated schema.
    /// Returns the warnings to send.
    fn field_validation(&self, def: &ResourceDef, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        self.field_validation_with(def, obj, &[])
    }

    /// As [`field_validation`](Self::field_validation), also reporting keys duplicated in
    /// the JSON `body` the object was decoded from.
    fn field_validation_with(&self, def: &ResourceDef, obj: &mut Value, body: &[u8]) -> Result<Vec<String>, ApiError> {
        let mode = match self.query.get("fieldValidation") {
            None | Some("") | Some("Warn") => "Warn",
            Some("Strict") => "Strict",
            Some("Ignore") => "Ignore",
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation: Invalid value: {other:?}: fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\""
                )))
            }
        };
        let unknown = match self.custom_version(def) {
            Some(v) => nanokube_api::crd::unknown_fields(&v.schema, obj),
            None => nanokube_api::protobuf::unknown_fields(&def.api_version(), def.kind, obj).unwrap_or_default(),
        };
        let json_body = self.content_type().split(';').next().unwrap_or("").trim() == "application/json";
        let duplicates = if json_body && !body.is_empty() { nanokube_api::json::duplicate_fields(body) } else { Vec::new() };
        if unknown.is_empty() && duplicates.is_empty() {
            return Ok(Vec::new());
        }
        let mut problems: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
        problems.extend(duplicates.iter().map(|d| format!("duplicate field \"{d}\"")));
        match mode {
            "Strict" => Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                problems.join(", "),
                kind = def.kind,
                version = def.version,
            ))),
            // Built-in types are decoded into typed structs upstream, so unknown fields
            // never survive: Warn and Ignore both drop them; Warn also says so.
            mode => {
                for u in &unknown {
                    remove_path(obj, u);
                }
                Ok(if mode == "Warn" { problems } else { Vec::new() })
            }
        }
    }

    /// The CRD version behind a custom resource.
    fn custom_version(&self, def: &ResourceDef) -> Option<std::sync::Arc<nanokube_api::crd::CrdVersion>> {
        if !def.custom {
            return None;
        }
        self.server.registry.resources().custom_resource(def.group, def.plural)?.version(def.version).cloned()
    }

    fn include(&self) -> Result<Include, ApiError> {
        match self.query.get("includeObject") {
            None | Some("") | Some("Metadata") => Ok(Include::Metadata),
            Some("Object") => Ok(Include::Object),
            Some("None") => Ok(Include::None),
            Some(other) => {
                Err(ApiError::bad_request(format!("includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\"")))
            }
        }
    }

    /// Decode a request body by its Content-Type.
    fn decode_body(&self, body: &[u8]) -> Result<Value, ApiError> {
        let ct = self.content_type();
        let mime = ct.split(';').next().unwrap_or("").trim();
        match mime {
            "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
                // serde_json stops at 128 levels, past the 100 every write is held to.
                if e.to_string().starts_with("recursion limit exceeded") {
                    ApiError::bad_request(format!("the request body nests deeper than {} levels", nanokube_api::json::MAX_DEPTH))
                } else {
                    ApiError::bad_request(format!("Object 'Kind' is missing in '{}': {e}", String::from_utf8_lossy(&body[..body.len().min(200)])))
                }
            }),
            "application/yaml" | "application/x-yaml" | "text/yaml" => {
                decode_yaml(body).map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
            }
            "application/vnd.kubernetes.protobuf" => {
                nanokube_api::protobuf::decode_request(body).map_err(|e| ApiError::bad_request(format!("failed to decode protobuf body: {e}")))
            }
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// A Table of `objs` (see [`crate::tables`]).
    fn table(&self, def: &ResourceDef, objs: &[Obj], meta: Value, meta_v: &str) -> Result<Bytes, ApiError> {
        let custom = self.custom_version(def);
        let spec = TableSpec { def, custom: custom.as_deref(), include: self.include()?, meta_version: meta_v, now: OffsetDateTime::now_utc() };
        Ok(Bytes::from(crate::tables::write_table(&spec, objs, &meta, true)))
    }

    fn respond_object(&self, def: &ResourceDef, code: StatusCode, obj: &Obj) -> Result<Response<Body>, ApiError> {
        let out = h::negotiate(self.accept())?;
        match out {
            Output::Table(v) => {
                let meta = json!({"resourceVersion": meta::resource_version(obj)});
                Ok(h::json_bytes(code, &out.content_type(false), self.table(def, std::slice::from_ref(obj), meta, v)?))
            }
            Output::PartialMetadata(v) => Ok(h::json_bytes(code, &out.content_type(false), Bytes::from(crate::tables::partial_metadata_json(obj, v)))),
            Output::Json => Ok(h::json_bytes(code, "application/json", obj.json())),
            _ => Ok(h::encode(out, code, obj)),
        }
    }

    async fn resource(&self, body: Bytes) -> Result<Response<Body>, ApiError> {
        let info = self.info;
        let def = self.server.registry.resources().find(&info.group, &info.version, &info.resource).ok_or_else(ApiError::path_not_found)?;
        // Deprecated custom resource versions warn on every request, as upstream does.
        let deprecation = self.custom_version(def).and_then(|v| v.deprecation_warning.clone());
        let response = self.resource_of(def, body).await;
        // Admission's warnings go with its answer, a denial included.
        let mut warnings: Vec<String> = deprecation.into_iter().collect();
        warnings.extend(self.requester.take_warnings());
        match response {
            Ok(r) => Ok(with_warnings(r, &warnings)),
            Err(e) if warnings.is_empty() => Err(e),
            Err(e) => Ok(with_warnings(h::error(&e), &warnings)),
        }
    }

    /// `metrics.k8s.io`: get and list of what the nodes report ([`crate::resource_metrics`]).
    fn resource_metrics(&self, def: &'static ResourceDef) -> Result<Response<Body>, ApiError> {
        use crate::resource_metrics as rm;
        let info = self.info;
        let out = h::negotiate(self.accept())?;
        let value = match info.verb.as_str() {
            "get" => rm::get(&self.server.registry, &self.server.metrics_nodes, def, &info.namespace, &info.name)?,
            "list" => {
                let labels = nanokube_api::selector::LabelSelector::parse(self.query.get("labelSelector").unwrap_or(""))?;
                let ns = if def.namespaced && !info.namespace.is_empty() { Some(info.namespace.as_str()) } else { None };
                rm::list(&self.server.registry, &self.server.metrics_nodes, def, ns, labels)?
            }
            _ => return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({})", def.plural))),
        };
        match out {
            Output::Table(mv) => {
                let items: Vec<Value> = value.get("items").and_then(Value::as_array).cloned().unwrap_or_else(|| vec![value.clone()]);
                let objs: Vec<crate::registry::Obj> = items.into_iter().map(|o| Arc::new(crate::registry::Stored::new(o))).collect();
                Ok(h::json_bytes(StatusCode::OK, &out.content_type(true), self.table(def, &objs, json!({}), mv)?))
            }
            _ => Ok(h::encode(out, StatusCode::OK, &value)),
        }
    }

    /// `componentstatuses`: get and list of what [`crate::component_status`] reports.
    fn component_statuses(&self, def: &'static ResourceDef) -> Result<Response<Body>, ApiError> {
        let all = crate::component_status::all(self.server);
        let out = h::negotiate(self.accept())?;
        match self.info.verb.as_str() {
            "get" => {
                let obj =
                    all.into_iter().find(|c| meta::name(c) == self.info.name).ok_or_else(|| ApiError::not_found(def.plural, def.group, &self.info.name))?;
                self.respond_object(def, StatusCode::OK, &Arc::new(crate::registry::Stored::new(obj)))
            }
            "list" => {
                let objs: Vec<crate::registry::Obj> = all.into_iter().map(|o| Arc::new(crate::registry::Stored::new(o))).collect();
                match out {
                    Output::Table(mv) => Ok(h::json_bytes(StatusCode::OK, &out.content_type(true), self.table(def, &objs, json!({}), mv)?)),
                    _ => {
                        let items: Vec<Value> = objs.iter().map(|o| o.to_value()).collect();
                        Ok(h::encode(out, StatusCode::OK, &json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items})))
                    }
                }
            }
            _ => Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({})", def.plural))),
        }
    }

    /// Bring the store's reads up to date before a read that must be current (no
    /// `resourceVersion`, or one newer than this server has seen) and before a write,
    /// which builds on what it reads: with several servers on one etcd, this server's
    /// watch cache may trail a write another server acknowledged.
    async fn sync_store(&self) -> Result<(), ApiError> {
        let wants_current = match self.query.get("resourceVersion") {
            None | Some("") => true,
            Some(rv) => rv.parse::<i64>().is_ok_and(|n| n > self.server.registry.store().current_revision()),
        };
        if wants_current || !matches!(self.info.verb.as_str(), "get" | "list") {
            self.server.registry.store().sync().await.map_err(|e| ApiError::internal(e.to_string()))?;
        }
        Ok(())
    }

    async fn resource_of(&self, def: &'static ResourceDef, body: Bytes) -> Result<Response<Body>, ApiError> {
        let info = self.info;
        // A cluster-scoped kind exists only at its cluster path: under `namespaces/{ns}/`
        // it is not found, as upstream's routes (authorization has already seen the
        // namespace, so answering anything else would let a namespace's RBAC reach it).
        // `namespaces/{name}` alone names the namespace object itself.
        if info.namespace_scoped && !def.namespaced {
            return Err(ApiError::path_not_found());
        }
        let is_namespace_object = def.group.is_empty() && def.plural == "namespaces";
        if !info.namespace_scoped && !info.namespace.is_empty() && !is_namespace_object {
            return Err(ApiError::path_not_found());
        }
        if def.namespaced && info.namespace.is_empty() && !matches!(info.verb.as_str(), "list" | "watch") {
            return Err(ApiError::path_not_found());
        }
        if def.group == crate::resource_metrics::GROUP {
            return self.resource_metrics(def);
        }
        if def.verbs == nanokube_api::resources::GET_LIST {
            return Ok(with_warnings(self.component_statuses(def)?, &[crate::component_status::DEPRECATION.to_string()]));
        }
        if !def.is_stored() {
            if info.verb != "create" || !info.name.is_empty() {
                return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({})", def.plural)));
            }
            let obj = self.decode_body(&body)?;
            crate::registry::Registry::check_type(def, &obj)?;
            let out = reviews::review(self.server, self.user, def, &info.namespace, obj)?;
            return self.respond_object(def, StatusCode::CREATED, &Arc::new(crate::registry::Stored::new(out)));
        }
        let ns = info.namespace.as_str();
        if info.verb != "watch" {
            self.sync_store().await?;
        }
        if !info.subresource.is_empty() {
            if info.subresource == "proxy" && self.headers.contains_key(http::header::UPGRADE) {
                // An upgrade the backend did not take (or that never reached it) ends the
                // client's connection: it must not stay open, authenticated, for another
                // request (the CVE-2018-1002105 class).
                let mut resp = self.subresource(def, body).await.unwrap_or_else(|e| h::error(&e));
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                return Ok(resp);
            }
            return self.subresource(def, body).await;
        }
        match info.verb.as_str() {
            "get" => {
                let obj = self.server.registry.get(def, ns, &info.name)?;
                self.respond_object(def, StatusCode::OK, &obj)
            }
            "list" => self.list(def).await,
            "watch" => self.watch(def).await,
            "create" if def.group.is_empty() && def.plural == "bindings" => {
                let binding = self.decode_body(&body)?;
                self.bind(ns, meta::name(&binding), &binding).await
            }
            "create" => {
                let mut obj = self.decode_body(&body)?;
                let mut warnings = self.field_validation_with(def, &mut obj, &body)?;
                warnings.extend(crd_warnings(def, &obj));
                self.admit_rbac(def, &obj)?;
                let custom = self.custom_version(def);
                crate::fieldmanager::record_update(
                    Self::type_schema(def, custom.as_deref()),
                    None,
                    &mut obj,
                    &self.manager()?,
                    &def.api_version(),
                    "",
                    def.has_status(),
                );
                let opts = self.write_options(None)?;
                let created = self.server.registry.create(def, ns, obj, &opts).await?;
                Ok(with_warnings(self.respond_object(def, StatusCode::CREATED, &created)?, &warnings))
            }
            "update" => {
                let mut obj = self.decode_body(&body)?;
                let mut warnings = self.field_validation_with(def, &mut obj, &body)?;
                warnings.extend(crd_warnings(def, &obj));
                self.admit_rbac(def, &obj)?;
                crate::registry::Registry::check_type(def, &obj)?;
                let opts = self.write_options(None)?;
                let manager = self.manager()?;
                let custom = self.custom_version(def);
                let updated = self
                    .server
                    .registry
                    .update_with(def, ns, &info.name, &opts, |cur| {
                        let mut next = obj.clone();
                        crate::fieldmanager::record_update(
                            Self::type_schema(def, custom.as_deref()),
                            Some(cur),
                            &mut next,
                            &manager,
                            &def.api_version(),
                            "",
                            def.has_status(),
                        );
                        Ok(next)
                    })
                    .await?;
                Ok(with_warnings(self.respond_object(def, StatusCode::OK, &updated)?, &warnings))
            }
            "patch" => {
                let existed = self.server.registry.get(def, ns, &info.name).is_ok();
                let (updated, warnings) = self.patch(def, &body, None).await?;
                // Server-side apply answers 201 when it created the object.
                let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
                Ok(with_warnings(self.respond_object(def, code, &updated)?, &warnings))
            }
            "delete" => {
                let opts = self.delete_options(&body)?;
                match self.server.registry.delete(def, ns, &info.name, &opts).await? {
                    Deleted::Pending(obj) => {
                        let code = if self.orphan_dependents_false(&body) { StatusCode::ACCEPTED } else { StatusCode::OK };
                        self.respond_object(def, code, &obj)
                    }
                    Deleted::Gone(obj) => {
                        if returns_deleted_object(def) {
                            self.respond_object(def, StatusCode::OK, &obj)
                        } else {
                            Ok(h::json(StatusCode::OK, &nanokube_api::error::success_status(meta::name(&obj), def.group, def.plural, meta::uid(&obj))))
                        }
                    }
                }
            }
            "deletecollection" => {
                let opts = self.delete_options(&body)?;
                let list_opts = self.list_options()?;
                let listed = self.server.registry.list(def, if ns.is_empty() { None } else { Some(ns) }, &list_opts)?;
                let mut deleted = Vec::new();
                for obj in listed.items {
                    match self.server.registry.delete(def, meta::namespace(&obj), meta::name(&obj), &opts).await {
                        Ok(Deleted::Gone(o)) | Ok(Deleted::Pending(o)) => deleted.push((*o).clone()),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                let rv = self.server.registry.store().current_revision();
                Ok(h::json(
                    StatusCode::OK,
                    &json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
                ))
            }
            _ => Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({})", def.plural))),
        }
    }

    /// The field manager of this request (`fieldManager`, else the User-Agent's first word).
    fn manager(&self) -> Result<String, ApiError> {
        let fm = self.query.get("fieldManager");
        if let Some(m) = fm {
            if m.len() > 128 || m.chars().any(|c| c.is_control()) {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    vec![nanokube_api::error::Cause {
                        reason: "FieldValueInvalid".into(),
                        message: format!("Invalid value: {m:?}: must be at most 128 printable characters"),
                        field: "fieldManager".into(),
                    }],
                ));
            }
        }
        let ua = self.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        Ok(crate::fieldmanager::manager_name(fm, ua))
    }

    /// The schema field management follows: the generated message of a built-in kind, or
    /// the CRD version's structural schema.
    fn type_schema<'a>(def: &ResourceDef, custom: Option<&'a nanokube_api::crd::CrdVersion>) -> crate::fieldmanager::Schema<'a> {
        use crate::fieldmanager::Schema;
        match custom {
            Some(v) => Schema::Json(&v.schema),
            None => builtin_message(def).map(Schema::Message).unwrap_or(Schema::Leaf),
        }
    }

    /// RBAC escalation prevention: creating or updating a role needs the `escalate` verb
    /// or every permission it grants; binding a role needs the `bind` verb on it or every
    /// permission it grants (in the binding's namespace). `system:masters` is exempt.
    fn admit_rbac(&self, def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
        if def.group != "rbac.authorization.k8s.io" || self.user.in_group(crate::authn::SYSTEM_MASTERS) {
            return Ok(());
        }
        let ns = if def.namespaced { self.info.namespace.clone() } else { String::new() };
        let name = meta::name(obj).to_string();
        let allowed = |verb: &str, resource: &str, target: &str| {
            let req = RequestInfo {
                is_resource: true,
                verb: verb.into(),
                group: def.group.into(),
                version: "v1".into(),
                resource: resource.into(),
                namespace: ns.clone(),
                name: target.into(),
                ..Default::default()
            };
            self.server.authz.authorize(self.user, &req) == Decision::Allow
        };
        let wanted = match def.plural {
            "roles" | "clusterroles" => {
                if allowed("escalate", def.plural, &name) {
                    return Ok(());
                }
                crate::rbac::Rule::list_from(obj)
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
                let role = obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
                let (role_plural, role_ns) = if kind == "Role" { ("roles", ns.as_str()) } else { ("clusterroles", "") };
                if allowed("bind", role_plural, role) {
                    return Ok(());
                }
                let role_def = resources::find(def.group, "v1", role_plural).expect("rbac");
                let role_obj = self.server.registry.get(role_def, role_ns, role)?;
                crate::rbac::Rule::list_from(&role_obj)
            }
            _ => return Ok(()),
        };
        if let Err(missing) = self.server.rbac.covers(self.user, &ns, &wanted) {
            let shown: Vec<String> = missing
                .iter()
                .map(|r| {
                    if r.non_resource_urls.is_empty() {
                        let mut s = format!("{{APIGroups:{:?}, Resources:{:?}", r.api_groups, r.resources);
                        if !r.resource_names.is_empty() {
                            s.push_str(&format!(", ResourceNames:{:?}", r.resource_names));
                        }
                        s.push_str(&format!(", Verbs:{:?}}}", r.verbs));
                        s
                    } else {
                        format!("{{NonResourceURLs:{:?}, Verbs:{:?}}}", r.non_resource_urls, r.verbs)
                    }
                })
                .collect();
            let groups = self.user.groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(" ");
            let mut e = ApiError::forbidden(format!(
                "{}.{} \"{}\" is forbidden: user \"{}\" (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
                def.plural,
                def.group,
                name,
                self.user.name,
                groups,
                shown.join("\n")
            ));
            e.details.name = Some(name);
            e.details.group = Some(def.group.into());
            e.details.kind = Some(def.plural.into());
            return Err(e);
        }
        Ok(())
    }

    /// `POST serviceaccounts/{name}/token`: a bound token for the service account.
    fn token_request(&self, ns: &str, sa_name: &str, mut req: Value) -> Result<Value, ApiError> {
        let issuer = self.server.tokens.as_ref().ok_or_else(ApiError::path_not_found)?;
        let kind = req.get("kind").and_then(Value::as_str).unwrap_or("TokenRequest");
        if kind != "TokenRequest" {
            return Err(ApiError::bad_request(format!("the body of the request was not a TokenRequest: kind {kind:?}")));
        }
        let sa_def = resources::find("", "v1", "serviceaccounts").expect("serviceaccounts");
        let sa = self.server.registry.get(sa_def, ns, sa_name)?;
        let invalid = |field: &str, msg: String| {
            ApiError::invalid(
                "TokenRequest",
                "authentication.k8s.io",
                sa_name,
                vec![nanokube_api::error::Cause { reason: "FieldValueInvalid".into(), message: msg, field: field.into() }],
            )
        };
        let expiration = match req.pointer("/spec/expirationSeconds") {
            None | Some(Value::Null) => 3600,
            Some(v) => v.as_i64().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: json: cannot unmarshal {} into Go struct field TokenRequestSpec.spec.expirationSeconds of type int64",
                    if v.is_string() { "string".to_string() } else { format!("{} {v}", if v.is_number() { "number" } else { "value" }) }
                ))
            })?,
        };
        if expiration < 600 {
            return Err(invalid("spec.expirationSeconds", format!("Invalid value: {expiration}: may not specify a duration less than 10 minutes")));
        }
        if expiration > 1 << 32 {
            return Err(invalid("spec.expirationSeconds", format!("Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds")));
        }
        let audiences: Vec<String> = req
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let mut bound_pod = None;
        let bound = match req.pointer("/spec/boundObjectRef").filter(|b| b.is_object()) {
            None => None,
            Some(b) => {
                let kind = b.get("kind").and_then(Value::as_str).unwrap_or("");
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                let plural = match kind {
                    "Pod" => "pods",
                    "Secret" => "secrets",
                    other => return Err(invalid("spec.boundObjectRef.kind", format!("Unsupported value: {other:?}: supported values: \"Pod\", \"Secret\""))),
                };
                let obj = self.server.registry.get(resources::find("", "v1", plural).expect("core"), ns, name)?;
                let uid = meta::uid(&obj).to_string();
                if let Some(want) = b.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty()) {
                    if want != uid {
                        return Err(ApiError::conflict_msg(plural, "", name, &format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated")));
                    }
                }
                let mut node = None;
                if kind == "Pod" {
                    node = crate::satoken::pod_node(&self.server.registry, obj.value());
                    bound_pod = Some(obj.to_value());
                }
                Some(crate::satoken::BoundObject { kind: kind.to_string(), name: name.to_string(), uid, node })
            }
        };
        // NodeRestriction: a node's tokens are bound to its own pods.
        crate::admission::node_restriction::check_token_request(self.user, sa_name, bound_pod.as_ref())?;
        let (token, exp) = issuer.bound_token(ns, sa_name, meta::uid(&sa), &audiences, expiration, bound.as_ref());
        let exp_time = time::OffsetDateTime::from_unix_timestamp(exp).map(meta::format_time).unwrap_or_default();
        req["apiVersion"] = json!("authentication.k8s.io/v1");
        req["kind"] = json!("TokenRequest");
        let m = meta::metadata_mut(&mut req);
        m.insert("name".into(), json!(sa_name));
        m.insert("namespace".into(), json!(ns));
        m.insert("creationTimestamp".into(), Value::Null);
        req["spec"]["audiences"] = json!(if audiences.is_empty() { issuer.api_audiences.clone() } else { audiences });
        req["spec"]["expirationSeconds"] = json!(expiration);
        req["status"] = json!({"token": token, "expirationTimestamp": exp_time});
        Ok(req)
    }

    fn orphan_dependents_false(&self, body: &[u8]) -> bool {
        self.query.get("orphanDependents") == Some("false")
            || serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("orphanDependents").cloned()) == Some(json!(false))
    }

    fn delete_options(&self, body: &[u8]) -> Result<DeleteOptions, ApiError> {
        let mut opts = DeleteOptions { dry_run: self.dry_run()?, requester: Some(self.requester.clone()), ..Default::default() };
        if !body.is_empty() {
            let v: Value = self.decode_body(body)?;
            if let Some(k) = v.get("kind").and_then(Value::as_str) {
                if k != "DeleteOptions" {
                    return Err(ApiError::bad_request(format!("the body of the request was not a DeleteOptions object: kind {k:?}")));
                }
            }
            opts.propagation = v.get("propagationPolicy").and_then(Value::as_str).map(String::from);
            opts.grace_period = v.get("gracePeriodSeconds").and_then(Value::as_i64);
            opts.precondition_uid = v.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from);
            opts.precondition_rv = v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(String::from);
            if v.get("orphanDependents") == Some(&json!(true)) && opts.propagation.is_none() {
                opts.propagation = Some("Orphan".into());
            }
            if v.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "All")) {
                opts.dry_run = true;
            }
        }
        if let Some(p) = self.query.get("propagationPolicy") {
            opts.propagation = Some(p.to_string());
        }
        if let Some(g) = self.query.get("gracePeriodSeconds") {
            opts.grace_period = Some(g.parse().map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}")))?);
        }
        if self.query.get("orphanDependents") == Some("true") && opts.propagation.is_none() {
            opts.propagation = Some("Orphan".into());
        }
        Ok(opts)
    }

    fn list_options(&self) -> Result<ListOptions, ApiError> {
        let labels = LabelSelector::parse(self.query.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(self.query.get("fieldSelector").unwrap_or(""))?;
        let limit = match self.query.get("limit") {
            None | Some("") => 0,
            Some(l) => match l.parse::<i64>() {
                Ok(n) if n >= 0 => n as usize,
                _ => return Err(ApiError::bad_request(format!("limit: Invalid value: {l:?}: must be a non-negative integer"))),
            },
        };
        check_resource_version_param(self.query.get("resourceVersion"))?;
        // Upstream converts every ListOptions parameter, used or not, and refuses what
        // does not convert; a list ignores its timeout but still checks it.
        if let Some(t) = self.query.get("timeoutSeconds").filter(|t| !t.is_empty() && t.parse::<i64>().is_err()) {
            return Err(ApiError::bad_request(format!("timeoutSeconds: Invalid value: {t:?}: must be an integer")));
        }
        if self.query.get("resourceVersionMatch").is_some_and(|m| !m.is_empty()) && self.query.get("resourceVersion").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"));
        }
        // resourceVersionMatch=Exact reads the list as it was at that revision.
        let exact_revision = match (self.query.get("resourceVersionMatch"), self.query.get("resourceVersion")) {
            (Some("Exact"), Some(rv)) => rv.parse::<i64>().ok().filter(|n| *n > 0),
            _ => None,
        };
        Ok(ListOptions { labels, fields, limit, continue_token: self.query.get("continue").map(String::from), exact_revision })
    }

    fn check_list_rv(&self) -> Result<(), ApiError> {
        let rv = self.query.get("resourceVersion").unwrap_or("");
        if rv.is_empty() || rv == "0" {
            return Ok(());
        }
        let n: i64 = rv.parse().map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}: must be a non-negative integer")))?;
        let current = self.server.registry.store().current_revision();
        match self.query.get("resourceVersionMatch").unwrap_or("NotOlderThan") {
            "NotOlderThan" | "" => {
                if n > current {
                    return Err(ApiError::too_large_resource_version(n, current));
                }
                Ok(())
            }
            // An older revision is read by undoing the retained changes since (410 past them).
            "Exact" if n > current => Err(ApiError::too_large_resource_version(n, current)),
            "Exact" => Ok(()),
            other => Err(ApiError::bad_request(format!("resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""))),
        }
    }

    async fn list(&self, def: &'static ResourceDef) -> Result<Response<Body>, ApiError> {
        let out = h::negotiate(self.accept())?;
        self.check_list_rv()?;
        let opts = self.list_options()?;
        let ns = (!self.info.namespace.is_empty()).then_some(self.info.namespace.as_str());
        let l = self.server.registry.list(def, ns, &opts)?;
        let meta = list_metadata(l.revision, l.continue_token.as_deref(), l.remaining);
        match out {
            Output::Table(mv) => Ok(h::json_bytes(StatusCode::OK, &out.content_type(true), self.table(def, &l.items, meta, mv)?)),
            Output::PartialMetadata(mv) => {
                Ok(h::json_bytes(StatusCode::OK, &out.content_type(true), Bytes::from(crate::tables::write_partial_list(&l.items, &meta, mv))))
            }
            Output::Yaml => {
                let list = ListOut {
                    api_version: def.api_version(),
                    items: EachObject { objs: &l.items, each: &Value::clone },
                    kind: def.list_kind(),
                    metadata: meta,
                };
                Ok(h::bytes_response(StatusCode::OK, "application/yaml", Bytes::from(serde_norway::to_string(&list).unwrap_or_default())))
            }
            Output::Json => {
                // Items are serialized as stored, so build the list text directly.
                // Sized exactly: growing by doubling would copy a 130 MB list of 100,000
                // objects on the way and hold up to twice its size.
                let mut buf = Vec::with_capacity(513 + l.items.iter().map(|o| o.json_len() + 1).sum::<usize>());
                buf.extend_from_slice(format!("{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":", def.list_kind(), def.api_version()).as_bytes());
                serde_json::to_writer(&mut buf, &meta).expect("serialize");
                buf.extend_from_slice(b",\"items\":[");
                for (i, o) in l.items.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    o.write_json(&mut buf);
                }
                buf.extend_from_slice(b"]}\n");
                Ok(h::bytes_response(StatusCode::OK, "application/json", Bytes::from(buf)))
            }
        }
    }

    async fn watch(&self, def: &'static ResourceDef) -> Result<Response<Body>, ApiError> {
        let out = h::negotiate(self.accept())?;
        let labels = LabelSelector::parse(self.query.get("labelSelector").unwrap_or(""))?;
        let fields = self.server.registry.selectable(def, &FieldSelector::parse(self.query.get("fieldSelector").unwrap_or(""))?);
        fields.check_supported(def.group, def.plural, def.namespaced)?;
        let ns = (!self.info.namespace.is_empty()).then(|| self.info.namespace.clone());
        check_resource_version_param(self.query.get("resourceVersion"))?;
        let rv = self.query.get("resourceVersion").unwrap_or("").to_string();
        let send_initial = self.query.flag("sendInitialEvents");
        let bookmarks = self.query.flag("allowWatchBookmarks");
        let timeout = match self.query.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}")))?),
            // Upstream closes watches at a random point in [min-request-timeout, 2x].
            None => Duration::from_secs(1800 + fastrand::u64(..1800)),
        };
        if send_initial && self.query.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                vec![nanokube_api::error::Cause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                    field: "resourceVersionMatch".into(),
                }],
            ));
        }
        let registry = self.server.registry.clone();
        // Initial state: synthetic ADDED events when the client has no revision.
        let (initial, start_rv) = if rv.is_empty() || rv == "0" || send_initial {
            let opts = ListOptions { labels: labels.clone(), fields: fields.clone(), ..Default::default() };
            let l = registry.list(def, ns.as_deref(), &opts)?;
            let start = if send_initial && !rv.is_empty() && rv != "0" { rv.parse::<i64>().unwrap_or(l.revision).max(l.revision) } else { l.revision };
            (l.items, start)
        } else {
            (Vec::new(), rv.parse::<i64>().map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}")))?)
        };
        let watch = match registry.watch(def, ns.as_deref(), start_rv, labels, fields) {
            Ok(w) => Ok(w),
            Err(e) if e.code == 410 => {
                Err(crate::watch::error_event(&ApiError::expired(format!("too old resource version: {} ({})", start_rv, registry.store().oldest_watchable()))))
            }
            Err(e) => return Err(e),
        };
        let include = self.include()?;
        let watch_guard = (self.server.metrics.watcher(def.group, def.version, def.kind), self.conn.watches.open());
        let content_type = match out {
            Output::Table(_) => out.content_type(false),
            _ => "application/json".to_string(),
        };
        let encoder = crate::watch::EventEncoder { def, out, include, custom: self.custom_version(def), first_table: true };
        let body = crate::watch::WatchBody::new(encoder, initial, send_initial, watch, start_rv, timeout, bookmarks, watch_guard);
        let mut r = Response::new(body.boxed());
        r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_str(&content_type).expect("header"));
        Ok(r)
    }

    async fn patch(&self, def: &ResourceDef, body: &[u8], subresource: Option<&str>) -> Result<(Obj, Vec<String>), ApiError> {
        let ct = self.content_type().to_string();
        let ty = PatchType::from_content_type(&ct).ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
        if def.custom && ty == PatchType::Strategic {
            // Custom resources have no Go types to carry patch strategies.
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if ty == PatchType::Apply {
            return self.apply(def, body, subresource).await;
        }
        let opts = self.write_options(subresource)?;
        let manager = self.manager()?;
        let custom = self.custom_version(def);
        // The patch applies to the object as stored, resourceVersion included (a JSON patch
        // may `test` or `replace` it, as kubectl's managed-fields migration does). A
        // resourceVersion the patch changes is a precondition; one it leaves alone is not.
        let body = body.to_vec();
        let mut warnings = Vec::new();
        let updated = self
            .server
            .registry
            .update_with(def, &self.info.namespace, &self.info.name, &opts, |current| {
                let mut patched = patch::apply(ty, current, &body, builtin_message(def))?;
                if meta::resource_version(&patched) == meta::resource_version(current) {
                    meta::metadata_mut(&mut patched).remove("resourceVersion");
                }
                warnings = self.field_validation(def, &mut patched)?;
                self.admit_rbac(def, &patched)?;
                crate::fieldmanager::record_update(
                    Self::type_schema(def, custom.as_deref()),
                    Some(current),
                    &mut patched,
                    &manager,
                    &def.api_version(),
                    subresource.unwrap_or(""),
                    def.has_status(),
                );
                Ok(patched)
            })
            .await?;
        Ok((updated, warnings))
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates the object if it is
    /// missing (201), else merges the applied configuration with conflict detection.
    async fn apply(&self, def: &ResourceDef, body: &[u8], subresource: Option<&str>) -> Result<(Obj, Vec<String>), ApiError> {
        let fm = self.query.get("fieldManager").unwrap_or("");
        if fm.is_empty() {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![nanokube_api::error::Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: is required for apply patch".into(),
                    field: "fieldManager".into(),
                }],
            ));
        }
        let manager = self.manager()?;
        let force = self.query.flag("force");
        let mut applied: Value = decode_yaml(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        for (field, ok) in [
            ("apiVersion", applied.get("apiVersion").and_then(Value::as_str).is_some_and(|v| !v.is_empty())),
            ("kind", applied.get("kind").and_then(Value::as_str).is_some_and(|v| !v.is_empty())),
        ] {
            if !ok {
                return Err(ApiError::bad_request(format!("invalid object type: {field} must be set in an applied configuration")));
            }
        }
        crate::registry::Registry::check_type(def, &applied)?;
        match meta::name(&applied) {
            "" => {
                meta::metadata_mut(&mut applied).insert("name".into(), json!(self.info.name));
            }
            n if n != self.info.name => {
                return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({})", self.info.name)))
            }
            _ => {}
        }
        let warnings = self.field_validation(def, &mut applied)?;
        self.admit_rbac(def, &applied)?;
        let custom = self.custom_version(def);
        let msg = Self::type_schema(def, custom.as_deref());
        let sub = subresource.unwrap_or("");
        let opts = self.write_options(subresource)?;
        let pinned = !meta::resource_version(&applied).is_empty();
        let ns = self.info.namespace.as_str();
        if self.server.registry.get(def, ns, &self.info.name).is_err() && subresource.is_none() {
            let obj = crate::fieldmanager::apply(msg, None, &applied, &manager, force, &def.api_version(), sub, def.has_status())?;
            match self.server.registry.create(def, ns, obj, &opts).await {
                Ok(created) => return Ok((created, warnings)),
                Err(e) if e.code == 409 => {} // created meanwhile: apply onto it
                Err(e) => return Err(e),
            }
        }
        let updated = self
            .server
            .registry
            .update_with(def, ns, &self.info.name, &opts, |current| {
                let mut next = crate::fieldmanager::apply(msg, Some(current), &applied, &manager, force, &def.api_version(), sub, def.has_status())?;
                if !pinned {
                    meta::metadata_mut(&mut next).remove("resourceVersion");
                }
                Ok(next)
            })
            .await?;
        Ok((updated, warnings))
    }

    /// A Binding: the pod gets its node (answered with a Success Status, as upstream).
    async fn bind(&self, ns: &str, pod: &str, binding: &Value) -> Result<Response<Body>, ApiError> {
        let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or("");
        let opts = self.write_options(None)?;
        self.server.registry.bind(ns, pod, node, &opts).await?;
        Ok(h::json(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
    }

    /// `pods/exec`: everything checked and the process started before the upgrade (see
    /// [`crate::pod_exec`]).
    /// `pods/exec` (`attach` false) and `pods/attach`: a session on the node, then the
    /// upgrade to WebSocket or SPDY (see [`crate::pod_exec`]). The wire's protocol, the
    /// request and the session are all settled before the upgrade.
    async fn exec(&self, def: &'static ResourceDef, attach: bool) -> Result<Response<Body>, ApiError> {
        let info = self.info;
        let wire = crate::upgrade::exec_wire(self.headers, self.streaming_upgrade()?)?;
        let pod = self.server.registry.get(def, &info.namespace, &info.name)?;
        let query = self.query;
        let req = if attach {
            crate::pod_exec::attach_request(pod.value(), query.get("container"), &|k| query.flag(k))?
        } else {
            crate::pod_exec::request(pod.value(), query.get("container"), query.all("command"), &|k| query.flag(k))?
        };
        if let Some(node) = self.remote_kubelet(pod.value(), self.server.exec_nodes.reach(pod.value()).is_ok()) {
            // kubelet's names for the streams.
            let query = {
                let mut q = form_urlencoded::Serializer::new(String::new());
                for c in &req.command {
                    q.append_pair("command", c);
                }
                for (on, name) in [(req.stdin, "input"), (req.stdout, "output"), (req.stderr, "error"), (req.tty, "tty")] {
                    if on {
                        q.append_pair(name, "1");
                    }
                }
                q.finish()
            };
            let kind = if attach { "attach" } else { "exec" };
            let path = format!("/{kind}/{}/{}/{}?{query}", info.namespace, info.name, req.container);
            return self.to_kubelet(&node, &path, Some(self.take_upgrade()?)).await;
        }
        let upgrade = self.take_upgrade()?;
        let session = if attach {
            crate::pod_exec::attach(&self.server.exec_nodes, pod.value(), req.clone()).await?
        } else {
            crate::pod_exec::exec(&self.server.exec_nodes, pod.value(), req.clone()).await?
        };
        crate::upgrade::serve_exec(self.headers, wire, upgrade, req, session)
    }

    /// The Node of `pod` when its node is not this process's (`local`: the agent here
    /// serves it) and publishes a kubelet API with an address: logs, exec, attach and port-forward then go
    /// there, as kube-apiserver reaches every kubelet.
    fn remote_kubelet(&self, pod: &Value, local: bool) -> Option<Value> {
        if local || self.server.kubelet_client.is_none() {
            return None;
        }
        let name = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())?;
        let node = self.server.registry.get(resources::find("", "v1", "nodes")?, "", name).ok()?;
        crate::node_proxy::kubelet_address(node.value(), None).is_ok().then(|| node.to_value())
    }

    /// The request passed on to `node`'s kubelet at `path` (with the client's headers, and
    /// its upgrade when it asks one), the kubelet's answer back.
    async fn to_kubelet(&self, node: &Value, path: &str, upgrade: Option<hyper::upgrade::OnUpgrade>) -> Result<Response<Body>, ApiError> {
        let tls = self.server.kubelet_client.clone().ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "this server has no kubelet client"))?;
        let fwd = crate::node_proxy::Forward { method: self.method, path_and_query: path, headers: self.headers, body: Bytes::new(), upgrade };
        crate::node_proxy::proxy(tls, node, None, fwd).await
    }

    /// For the streaming subresources (exec, attach, portforward): a WebSocket upgrade is
    /// a GET, so upstream also requires `create` (AuthorizePodWebsocketUpgradeCreatePermission);
    /// then the upgrade asked for.
    fn streaming_upgrade(&self) -> Result<crate::upgrade::Wire, ApiError> {
        let info = self.info;
        if self.method == Method::GET {
            let mut create = info.clone();
            create.verb = "create".into();
            if let Decision::Deny(_) | Decision::NoOpinion(_) = self.server.authz.authorize(self.user, &create) {
                let mut e = ApiError::forbidden(forbidden_message(self.user, &create, ""));
                e.details.name = Some(info.name.clone());
                e.details.kind = Some("pods".into());
                return Err(e);
            }
        }
        crate::upgrade::requested(self.headers)
    }

    /// The connection's upgrade, taken once.
    fn take_upgrade(&self) -> Result<hyper::upgrade::OnUpgrade, ApiError> {
        self.upgrade.lock().ok().and_then(|mut u| u.take()).ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded (HTTP/1.1 is needed)"))
    }

    /// `pods/portforward`: SPDY, SPDY tunnelled in a WebSocket, or WebSocket channels
    /// (see [`crate::pod_portforward`]); the pod and its node are checked before the upgrade.
    async fn portforward(&self, def: &'static ResourceDef) -> Result<Response<Body>, ApiError> {
        use crate::pod_portforward as pf;
        let info = self.info;
        let wire = self.streaming_upgrade()?;
        let ports = pf::ports(&self.query.all("ports"))?;
        let pod = self.server.registry.get(def, &info.namespace, &info.name)?;
        if let Some(node) = self.remote_kubelet(pod.value(), self.server.portforward_nodes.reach(pod.value()).is_ok()) {
            let ports: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
            let path = format!("/portForward/{}/{}?{}", info.namespace, info.name, ports.join("&"));
            return self.to_kubelet(&node, &path, Some(self.take_upgrade()?)).await;
        }
        let target = pf::Target::new(&self.server.portforward_nodes, pod.to_value())?;
        crate::upgrade::serve_portforward(self.headers, wire, self.take_upgrade()?, ports, target)
    }

    async fn subresource(&self, def: &'static ResourceDef, body: Bytes) -> Result<Response<Body>, ApiError> {
        let info = self.info;
        let sub = info.subresource.as_str();
        let ns = info.namespace.as_str();
        let is_namespace = def.group.is_empty() && def.plural == "namespaces";
        if is_namespace && sub == "finalize" {
            if self.method != Method::PUT {
                return Err(ApiError::method_not_allowed("finalize supports PUT only"));
            }
            let obj = self.decode_body(&body)?;
            let finalizers = obj.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
            let opts = self.write_options(Some("finalize"))?;
            let updated = self
                .server
                .registry
                .update_with(def, "", &info.name, &opts, |cur| {
                    let mut next = cur.clone();
                    next["spec"]["finalizers"] = finalizers.clone();
                    Ok(next)
                })
                .await?;
            return self.respond_object(def, StatusCode::OK, &updated);
        }
        let Some(sdef) = def.subresource(sub) else {
            return Err(ApiError::path_not_found());
        };
        match sdef.name {
            "binding" => {
                if self.method != Method::POST {
                    return Err(ApiError::method_not_allowed("pods/binding supports create only"));
                }
                let binding = self.decode_body(&body)?;
                self.bind(ns, &info.name, &binding).await
            }
            "log" => {
                if self.method != Method::GET {
                    return Err(ApiError::method_not_allowed("pods/log supports get only"));
                }
                let pod = self.server.registry.get(def, ns, &info.name)?;
                let query = self.query;
                let params = |k: &str| query.get(k).map(String::from);
                if let Some(node) = self.remote_kubelet(pod.value(), self.server.nodes.reach(pod.value()).is_ok()) {
                    let container = crate::pod_logs::check(pod.value(), &params)?;
                    let raw = self.query.raw();
                    let path = format!("/containerLogs/{ns}/{}/{container}{}{raw}", info.name, if raw.is_empty() { "" } else { "?" });
                    return self.to_kubelet(&node, &path, None).await;
                }
                let rx = crate::pod_logs::open(&self.server.nodes, pod.value(), &params)?;
                let mut resp = Response::new(h::channel(rx));
                resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                Ok(resp)
            }
            "proxy" if info.resource != "nodes" => {
                // `pods|services/[scheme:]<name>[:<port>]/proxy/<path>`.
                let location = if info.resource == "pods" {
                    crate::service_proxy::pod_location(&self.server.registry, ns, &info.name)?
                } else {
                    crate::service_proxy::service_location(&self.server.registry, ns, &info.name)?
                };
                let marker = format!("/{}/{}/proxy", info.resource, info.name);
                let rest = info.path.split_once(&marker).map(|(_, r)| r).unwrap_or("");
                if rest.is_empty() && self.method == Method::GET {
                    // As upstream's proxy handler: `.../proxy` goes to `.../proxy/`.
                    let mut resp = Response::new(crate::http::full(Bytes::new()));
                    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
                    let to = HeaderValue::from_str(&format!("{}/", info.path)).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    resp.headers_mut().insert(http::header::LOCATION, to);
                    return Ok(resp);
                }
                let mut target = if rest.is_empty() { "/".to_string() } else { rest.to_string() };
                if !self.query.raw().is_empty() {
                    target = format!("{target}?{}", self.query.raw());
                }
                let upgrade = self.upgrade.lock().ok().and_then(|mut u| u.take());
                let fwd = crate::node_proxy::Forward { method: self.method, path_and_query: &target, headers: self.headers, body, upgrade };
                crate::service_proxy::proxy(&self.server.portforward_nodes, location, fwd).await
            }
            "proxy" => {
                // `nodes/<name>[:<port>]/proxy/<path>`: the path and query as sent.
                let (name, port) = match info.name.split_once(':') {
                    Some((n, p)) => (n, Some(p.parse::<u16>().map_err(|_| ApiError::bad_request(format!("invalid port in {:?}", info.name)))?)),
                    None => (info.name.as_str(), None),
                };
                let node = self.server.registry.get(def, "", name)?;
                let marker = format!("/{}/{}/proxy", info.resource, info.name);
                let rest = info.path.split_once(&marker).map(|(_, r)| r).unwrap_or("");
                let mut target = if rest.is_empty() { "/".to_string() } else { rest.to_string() };
                if !self.query.raw().is_empty() {
                    target = format!("{target}?{}", self.query.raw());
                }
                let tls = self.server.kubelet_client.clone().ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "this server has no kubelet client"))?;
                let upgrade = self.upgrade.lock().ok().and_then(|mut u| u.take());
                let fwd = crate::node_proxy::Forward { method: self.method, path_and_query: &target, headers: self.headers, body, upgrade };
                crate::node_proxy::proxy(tls, node.value(), port, fwd).await
            }
            "eviction" => {
                if self.method != Method::POST {
                    return Err(ApiError::method_not_allowed("pods/eviction supports create only"));
                }
                let eviction = self.decode_body(&body)?;
                let opts = self.write_options(Some("eviction"))?;
                let status = crate::eviction::evict(&self.server.registry, ns, &info.name, &eviction, &opts).await?;
                Ok(h::json(StatusCode::CREATED, &status))
            }
            "exec" => self.exec(def, false).await,
            "attach" => self.exec(def, true).await,
            "portforward" => self.portforward(def).await,
            "token" => {
                if self.method != Method::POST {
                    return Err(ApiError::method_not_allowed("serviceaccounts/token supports create only"));
                }
                let req = self.decode_body(&body)?;
                let out = self.token_request(ns, &info.name, req)?;
                Ok(h::json(StatusCode::CREATED, &out))
            }
            // `approval` (CertificateSigningRequests) is a status write limited to the
            // conditions.
            sub @ ("status" | "approval" | "ephemeralcontainers" | "resize") => match self.method.as_str() {
                "GET" => {
                    let obj = self.server.registry.get(def, ns, &info.name)?;
                    self.respond_object(def, StatusCode::OK, &obj)
                }
                "PUT" => {
                    let obj = self.decode_body(&body)?;
                    let opts = self.write_options(Some(sub))?;
                    let updated = self.server.registry.update(def, ns, &info.name, obj, &opts).await?;
                    self.respond_object(def, StatusCode::OK, &updated)
                }
                "PATCH" => {
                    let (updated, warnings) = self.patch(def, &body, Some(sub)).await?;
                    Ok(with_warnings(self.respond_object(def, StatusCode::OK, &updated)?, &warnings))
                }
                _ => Err(ApiError::method_not_allowed(format!("{sub} supports get, update and patch"))),
            },
            "scale" => {
                // Custom resources declare where replicas and the selector live.
                let custom_scale = self.custom_version(def).and_then(|v| v.scale.clone());
                let (spec_ptr, status_ptr) = match &custom_scale {
                    Some(sc) => (nanokube_api::crd::path_to_pointer(&sc.spec_replicas), nanokube_api::crd::path_to_pointer(&sc.status_replicas)),
                    None => ("/spec/replicas".to_string(), "/status/replicas".to_string()),
                };
                let custom_selector = custom_scale.as_ref().map(|sc| sc.label_selector.as_deref().map(nanokube_api::crd::path_to_pointer));
                let to_scale = |obj: &Value| -> Value {
                    let selector = match &custom_selector {
                        Some(ptr) => ptr.as_deref().and_then(|p| obj.pointer(p)).and_then(Value::as_str).unwrap_or("").to_string(),
                        None => obj
                            .pointer("/spec/selector")
                            .map(|s| {
                                if def.group.is_empty() {
                                    nanokube_api::selector::LabelSelector {
                                        requirements: s
                                            .as_object()
                                            .map(|m| {
                                                m.iter()
                                                    .map(|(k, v)| nanokube_api::selector::Requirement::In(k.clone(), vec![v.as_str().unwrap_or("").into()]))
                                                    .collect()
                                            })
                                            .unwrap_or_default(),
                                    }
                                    .to_string_form()
                                } else {
                                    LabelSelector::from_object(s).map(|l| l.to_string_form()).unwrap_or_default()
                                }
                            })
                            .unwrap_or_default(),
                    };
                    json!({
                        "kind": "Scale", "apiVersion": "autoscaling/v1",
                        "metadata": {"name": meta::name(obj), "namespace": meta::namespace(obj), "uid": meta::uid(obj), "resourceVersion": meta::resource_version(obj),
                                     "creationTimestamp": obj.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null)},
                        "spec": {"replicas": obj.pointer(&spec_ptr).and_then(Value::as_i64).unwrap_or(0)},
                        "status": {"replicas": obj.pointer(&status_ptr).and_then(Value::as_i64).unwrap_or(0), "selector": selector},
                    })
                };
                let scale_resp = |obj: &Value| -> Response<Body> { h::json(StatusCode::OK, &to_scale(obj)) };
                match self.method.as_str() {
                    "GET" => {
                        let obj = self.server.registry.get(def, ns, &info.name)?;
                        Ok(scale_resp(&obj))
                    }
                    "PUT" | "PATCH" => {
                        let is_put = self.method == Method::PUT;
                        let ct = self.content_type().to_string();
                        let body_v = if is_put { Some(self.decode_body(&body)?) } else { None };
                        // `scale` names the subresource for admission rules; the write itself
                        // is one of the object (its status kept, as any update's).
                        let opts = self.write_options(Some("scale"))?;
                        let updated = self
                            .server
                            .registry
                            .update_with(def, ns, &info.name, &opts, |cur| {
                                let scale = match &body_v {
                                    Some(v) => {
                                        if let Some(rv) = v.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                                            if rv != meta::resource_version(cur) {
                                                return Err(ApiError::conflict(def.plural, def.group, meta::name(cur)));
                                            }
                                        }
                                        v.clone()
                                    }
                                    None => {
                                        let ty = PatchType::from_content_type(&ct).ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                                        patch::apply(ty, &to_scale(cur), &body, nanokube_api::protobuf::intern("api.autoscaling.v1.Scale"))?
                                    }
                                };
                                let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
                                if replicas < 0 {
                                    return Err(ApiError::invalid(
                                        "Scale",
                                        "autoscaling",
                                        meta::name(cur),
                                        vec![nanokube_api::error::Cause {
                                            reason: "FieldValueInvalid".into(),
                                            message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                                            field: "spec.replicas".into(),
                                        }],
                                    ));
                                }
                                let mut next = cur.clone();
                                set_pointer(&mut next, &spec_ptr, json!(replicas));
                                meta::metadata_mut(&mut next).remove("resourceVersion");
                                Ok(next)
                            })
                            .await?;
                        Ok(scale_resp(&updated))
                    }
                    _ => Err(ApiError::method_not_allowed("scale supports get, update and patch")),
                }
            }
            _ => Err(ApiError::path_not_found()),
        }
    }
}

/// Warnings for a CRD whose `x-kubernetes-validations` rules call CEL functions nanokube
/// does not have (those rules are not enforced).
/// Bodies from this size on are parsed off the async workers, so a slow one cannot hold
/// up the requests queued behind it on the same worker thread.
const BLOCKING_PARSE_BYTES: usize = 64 * 1024;

/// Decode a YAML body: refused unparsed if it nests flow collections deeper than
/// [`nanokube_api::json::MAX_DEPTH`], parsed off the async workers when large.
fn decode_yaml(body: &[u8]) -> Result<Value, String> {
    use nanokube_api::json::{flow_depth_exceeds, MAX_DEPTH};
    if flow_depth_exceeds(body, MAX_DEPTH) {
        return Err(format!("the document nests deeper than {MAX_DEPTH} levels"));
    }
    let parse = || serde_norway::from_slice::<Value>(body).map_err(|e| e.to_string());
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if body.len() >= BLOCKING_PARSE_BYTES && multi_thread {
        tokio::task::block_in_place(parse)
    } else {
        parse()
    }
}

/// A `resourceVersion` parameter must be empty or a non-negative integer (list and watch
/// read it as a revision; `-5` would otherwise mean "from the start").
fn check_resource_version_param(rv: Option<&str>) -> Result<(), ApiError> {
    match rv {
        None | Some("") => Ok(()),
        Some(rv) if rv.parse::<u64>().is_ok() => Ok(()),
        Some(rv) => Err(ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}: must be a non-negative integer"))),
    }
}

/// The generated schema's message of a built-in kind (`None` for custom resources).
fn builtin_message(def: &ResourceDef) -> Option<&'static str> {
    if def.custom {
        return None;
    }
    nanokube_api::protobuf::intern(&nanokube_api::protobuf::message_for(&def.api_version(), def.kind))
}

fn crd_warnings(def: &ResourceDef, obj: &Value) -> Vec<String> {
    if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
        nanokube_api::crd::rule_warnings(obj)
    } else {
        Vec::new()
    }
}

/// Set the value at a JSON pointer, creating objects on the way.
fn set_pointer(obj: &mut Value, ptr: &str, value: Value) {
    let mut cur = obj;
    let segs: Vec<&str> = ptr.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("object");
        if i + 1 == segs.len() {
            m.insert(seg.to_string(), value);
            return;
        }
        cur = m.entry(seg.to_string()).or_insert_with(|| json!({}));
    }
}

/// Add `Warning: 299 - "..."` headers, as upstream sends for field validation.
fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(http::header::WARNING, v);
        }
    }
    r
}

/// Remove a field named by a strict-decoding path (`spec.containers[0].imagee`).
fn remove_path(obj: &mut Value, path: &str) {
    let mut segs: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        while let Some(open) = rest.find('[') {
            if open > 0 {
                segs.push(rest[..open].to_string());
            }
            let close = rest[open..].find(']').map(|c| open + c).unwrap_or(rest.len() - 1);
            segs.push(rest[open..=close].to_string());
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            segs.push(rest.to_string());
        }
    }
    let Some((last, parents)) = segs.split_last() else { return };
    let mut cur = obj;
    for s in parents {
        let next = if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            match inner.parse::<usize>() {
                Ok(i) if cur.is_array() => cur.get_mut(i),
                _ => cur.get_mut(inner),
            }
        } else {
            cur.get_mut(s.as_str())
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last.as_str());
    }
}

/// Types whose DELETE answers with the deleted object rather than a Status.
fn returns_deleted_object(def: &ResourceDef) -> bool {
    matches!((def.group, def.plural), ("", "pods") | ("", "services") | ("", "namespaces") | ("", "persistentvolumes") | ("", "persistentvolumeclaims"))
}
