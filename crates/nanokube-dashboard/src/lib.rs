//! nanokube's dashboard: the third door into the cluster, next to kubectl and REST.
//!
//! The API server serves the page at `/dashboard/`. The page has no powers of its own:
//! every call it makes is an ordinary API request, authorized by RBAC as the identity
//! behind it. That identity comes one of two ways:
//!
//! - **Session** (a browser without a client certificate): the user pastes a bearer
//!   token; the server checks it, keeps it server-side and hands the browser an opaque
//!   session cookie (`HttpOnly`, `Secure`, `SameSite=Strict`, path `/dashboard/`) and a
//!   CSRF token. The page then calls the API under `/dashboard/k8s/…`, where the server
//!   swaps the cookie for the token and serves the request as if it had come with
//!   `Authorization: Bearer`. The token is authenticated again on every request, so a
//!   session dies with its token (a deleted service account, an expired bound token).
//! - **Direct** (through `kubectl proxy`/`nanokube proxy`, or a browser holding a
//!   client certificate): the page calls `/api…` itself and the proxy's or the
//!   certificate's identity applies; no login.
//!
//! This crate holds what is the dashboard's own: [`assets`] (the page, built into the
//! binary), [`session`] (the session store and its cookie and CSRF rules) and [`map`]
//! (the access map: who reached the API, how, and what they were allowed). The API
//! server's `dashboard` module wires them into request handling.

pub mod assets;
pub mod map;
pub mod session;
