//! Login sessions: an opaque cookie standing for a bearer token kept on the server.
//!
//! Invariants:
//! - The cookie holds a random session id, never the token; the token never appears in
//!   a URL, a cookie or a log line.
//! - A session stores the token, not the identity: the API server authenticates the
//!   token again on every request, so revoking the token ends the session.
//! - Every request that changes something carries the session's CSRF token in
//!   `X-CSRF-Token`; a request from another origin (an `Origin` header naming another
//!   host) is refused whatever it carries.
//! - Sessions end after [`IDLE`] without use, [`LIFETIME`] after login, or at logout;
//!   at most [`MAX_SESSIONS`] are held (the oldest go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use http::HeaderMap;
use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE: &str = "nanokube-session";

/// The header every changing request carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(60 * 60);

/// A session ends this long after login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Most sessions held at once.
pub const MAX_SESSIONS: usize = 10_000;

/// Longest token accepted at login (a service-account JWT is about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// One logged-in browser.
#[derive(Clone)]
pub struct Session {
    /// The bearer token the session stands for.
    pub token: String,
    /// What changing requests must carry in [`CSRF_HEADER`].
    pub csrf: String,
    created: Instant,
    last_used: Instant,
}

/// The sessions this server holds (in memory: a restart logs everyone out).
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, base64url without padding.
fn random_id() -> Option<String> {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

impl Sessions {
    /// A new session for `token` (already authenticated by the caller): its id (the
    /// cookie's value) and CSRF token. `None` if the system's random source failed.
    pub fn create(&self, token: &str) -> Option<(String, String)> {
        let (id, csrf) = (random_id()?, random_id()?);
        let now = Instant::now();
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), Session { token: token.to_string(), csrf: csrf.clone(), created: now, last_used: now });
        Some((id, csrf))
    }

    /// The live session with this id, marked as used.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if !live(s, now) {
            map.remove(id);
            return None;
        }
        s.last_used = now;
        Some(s.clone())
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_used) < IDLE && now.duration_since(s.created) < LIFETIME
}

/// The session id a request's `Cookie` headers carry.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// The `Set-Cookie` value that gives the browser a session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/dashboard/; HttpOnly; Secure; SameSite=Strict")
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/dashboard/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// Whether a request carries the session's CSRF token (compared in constant time).
pub fn csrf_ok(session: &Session, headers: &HeaderMap) -> bool {
    let Some(given) = headers.get(CSRF_HEADER).map(|v| v.as_bytes()) else {
        return false;
    };
    let want = session.csrf.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Whether a request may have come from the dashboard's own page: no `Origin` header
/// (same-origin GETs and non-browser clients), or one naming this host (the `Host`
/// header, or over HTTP/2 the request's `:authority`, given as `authority`). WebSocket
/// upgrades (`needs_origin`) must name it: browsers always send it there, and a
/// cross-site page opening a WebSocket is exactly what must be refused.
pub fn same_origin(headers: &HeaderMap, authority: Option<&str>, needs_origin: bool) -> bool {
    let host = headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or(authority);
    match headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => !needs_origin,
        Some(origin) => {
            let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            matches!((rest, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_until_removed() {
        let s = Sessions::default();
        let (id, csrf) = s.create("tok").expect("random");
        assert_ne!(id, csrf);
        assert_eq!(s.get(&id).map(|x| x.token), Some("tok".to_string()));
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn cookie_and_csrf_rules() {
        let s = Sessions::default();
        let (id, csrf) = s.create("tok").expect("random");
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, format!("a=b; {COOKIE}={id}; c=d").parse().expect("header"));
        assert_eq!(cookie(&h).as_deref(), Some(id.as_str()));
        let session = s.get(&id).expect("session");
        assert!(!csrf_ok(&session, &h));
        h.insert(CSRF_HEADER, csrf.parse().expect("header"));
        assert!(csrf_ok(&session, &h));
        h.insert(CSRF_HEADER, "x".parse().expect("header"));
        assert!(!csrf_ok(&session, &h));
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "127.0.0.1:6443".parse().expect("header"));
        assert!(same_origin(&h, None, false));
        assert!(!same_origin(&h, None, true));
        h.insert(http::header::ORIGIN, "https://127.0.0.1:6443".parse().expect("header"));
        assert!(same_origin(&h, None, true));
        h.insert(http::header::ORIGIN, "https://evil.example".parse().expect("header"));
        assert!(!same_origin(&h, None, false));
        // HTTP/2: no Host header, the authority instead.
        h.remove(http::header::HOST);
        h.insert(http::header::ORIGIN, "https://127.0.0.1:6443".parse().expect("header"));
        assert!(same_origin(&h, Some("127.0.0.1:6443"), false));
        assert!(!same_origin(&h, Some("127.0.0.2:6443"), false));
    }
}
