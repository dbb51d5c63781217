//! The dashboard's door into request handling (the page itself and the session rules
//! live in `nanokube-dashboard`):
//!
//! - `/dashboard/` and its files: the page, served to anyone (it holds no data).
//! - `POST /dashboard/login` (JSON `{"token": …}`): the token is authenticated as a
//!   bearer token would be; a session cookie and a CSRF token come back.
//! - `GET /dashboard/session`: who the session is (its token authenticated afresh).
//! - `POST /dashboard/logout`: ends the session.
//! - `/dashboard/k8s/<API path>`: the API, with the session's token standing in for
//!   the cookie. The request then goes through authentication, authorization,
//!   admission and audit exactly as if it had come with `Authorization: Bearer`.
//!
//! Without a session the page calls `/api…` directly (through `kubectl proxy`, or with
//! the browser's client certificate), and nothing here is involved.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use nanokube_api::error::ApiError;
use nanokube_dashboard::session;
use serde_json::{json, Value};

use crate::http::{self as h, Body};
use crate::server::ApiServer;

/// What the dashboard made of a request.
pub enum Routed {
    /// Answered here.
    Answer(Response<Body>),
    /// An API request made on a session's behalf: its path and headers were rewritten
    /// (cookie out, bearer token in); serve it as any other, ignoring the connection's
    /// client certificate.
    Api,
}

/// Whether a path is the dashboard's.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

/// Serve or rewrite a dashboard request.
pub async fn route(server: &ApiServer, parts: &mut http::request::Parts, body: &mut Option<Incoming>) -> Result<Routed, ApiError> {
    let path = parts.uri.path().to_string();
    let Some(rest) = path.strip_prefix("/dashboard/") else {
        let mut r = h::text(StatusCode::MOVED_PERMANENTLY, "");
        r.headers_mut().insert(http::header::LOCATION, HeaderValue::from_static("/dashboard/"));
        return Ok(Routed::Answer(r));
    };
    if rest == "k8s" || rest.starts_with("k8s/") {
        return api(server, parts, &path["/dashboard/k8s".len()..]).map(|()| Routed::Api);
    }
    let answer = match rest {
        "login" => login(server, parts, body.take()).await?,
        "logout" => logout(server, parts)?,
        "session" => whoami(server, parts)?,
        file => {
            if parts.method != Method::GET && parts.method != Method::HEAD {
                return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource: {} {path}", parts.method)));
            }
            let asset = nanokube_dashboard::assets::get(file).ok_or_else(ApiError::path_not_found)?;
            h::bytes_response(StatusCode::OK, asset.content_type, Bytes::from_static(asset.bytes))
        }
    };
    Ok(Routed::Answer(secured(answer)))
}

fn secured(mut r: Response<Body>) -> Response<Body> {
    for (k, v) in nanokube_dashboard::assets::SECURITY_HEADERS {
        r.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    r
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The page's own requests only: same origin, JSON (a cross-site form cannot send it
/// without a CORS preflight, which this server never grants).
fn check_page_request(parts: &http::request::Parts) -> Result<(), ApiError> {
    if !session::same_origin(&parts.headers, parts.uri.authority().map(|a| a.as_str()), false) {
        return Err(ApiError::forbidden("cross-origin request refused"));
    }
    Ok(())
}

async fn login(server: &ApiServer, parts: &http::request::Parts, body: Option<Incoming>) -> Result<Response<Body>, ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {} /dashboard/login",
            parts.method
        )));
    }
    check_page_request(parts)?;
    let json_body = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim() == "application/json"));
    if !json_body {
        return Err(ApiError::new(415, "UnsupportedMediaType", "login takes application/json"));
    }
    let body =
        crate::handler::read_body_within(body.ok_or_else(|| ApiError::internal("request body read twice"))?, &parts.headers, session::MAX_TOKEN_LEN + 1024)
            .await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("login body: {e}")))?;
    let token = v.get("token").and_then(Value::as_str).map(str::trim).unwrap_or("");
    if token.is_empty() || token.contains(|c: char| c.is_ascii_control() || c == ' ') {
        return Err(ApiError::bad_request("login body: \"token\" must be a bearer token"));
    }
    let user = server.authn.authenticate(None, Some(&bearer(token)))?;
    let (id, csrf) = server.dashboard_sessions.create(token).ok_or_else(|| ApiError::internal("no randomness for a session id"))?;
    let mut r = h::json(StatusCode::OK, &json!({"mode": "session", "user": user.to_json(), "csrfToken": csrf}));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    Ok(r)
}

fn logout(server: &ApiServer, parts: &http::request::Parts) -> Result<Response<Body>, ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {} /dashboard/logout",
            parts.method
        )));
    }
    check_page_request(parts)?;
    if let Some(id) = session::cookie(&parts.headers) {
        if let Some(s) = server.dashboard_sessions.get(&id) {
            if !session::csrf_ok(&s, &parts.headers) {
                return Err(ApiError::forbidden("missing or wrong X-CSRF-Token"));
            }
            server.dashboard_sessions.remove(&id);
        }
    }
    let mut r = h::json(StatusCode::OK, &json!({"loggedOut": true}));
    r.headers_mut().insert(http::header::SET_COOKIE, HeaderValue::from_str(&session::clear_cookie()).map_err(|_| ApiError::internal("cookie"))?);
    Ok(r)
}

fn whoami(server: &ApiServer, parts: &http::request::Parts) -> Result<Response<Body>, ApiError> {
    let id = session::cookie(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    let s = server.dashboard_sessions.get(&id).ok_or_else(ApiError::unauthorized)?;
    match server.authn.authenticate(None, Some(&bearer(&s.token))) {
        Ok(user) => Ok(h::json(StatusCode::OK, &json!({"mode": "session", "user": user.to_json(), "csrfToken": s.csrf}))),
        Err(e) => {
            // The token was revoked or expired: the session goes with it.
            server.dashboard_sessions.remove(&id);
            let mut r = h::error(&e);
            if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
                r.headers_mut().insert(http::header::SET_COOKIE, v);
            }
            Ok(r)
        }
    }
}

/// Rewrites a session's API request into the request its token would have made.
fn api(server: &ApiServer, parts: &mut http::request::Parts, api_path: &str) -> Result<(), ApiError> {
    let id = session::cookie(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    let s = server.dashboard_sessions.get(&id).ok_or_else(ApiError::unauthorized)?;
    let upgrade = parts.headers.contains_key(http::header::UPGRADE);
    if !session::same_origin(&parts.headers, parts.uri.authority().map(|a| a.as_str()), upgrade) {
        return Err(ApiError::forbidden("cross-origin request refused"));
    }
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !session::csrf_ok(&s, &parts.headers) {
        return Err(ApiError::forbidden("missing or wrong X-CSRF-Token"));
    }
    if !api_path.starts_with('/') {
        return Err(ApiError::path_not_found());
    }
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{api_path}?{q}"),
        None => api_path.to_string(),
    };
    parts.uri = path_and_query.parse().map_err(|_| ApiError::bad_request("bad request URI"))?;
    // The cookie and CSRF token stay here: nothing downstream (an aggregated server, a
    // proxied Service) ever sees them.
    parts.headers.remove(http::header::COOKIE);
    parts.headers.remove(session::CSRF_HEADER);
    let auth = HeaderValue::from_str(&bearer(&s.token)).map_err(|_| ApiError::unauthorized())?;
    parts.headers.insert(http::header::AUTHORIZATION, auth);
    Ok(())
}
