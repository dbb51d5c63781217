//! Bootstrap tokens: the short-lived bearer tokens a new node presents before it has a
//! certificate (kubeadm's `abcdef.0123456789abcdef`), kept as `bootstrap.kubernetes.io/token`
//! Secrets named `bootstrap-token-<id>` in `kube-system`, and checked here as upstream's
//! bootstrap authenticator does: the id names the Secret, the secret half must match, the
//! Secret must allow `usage-bootstrap-authentication`, must not be expiring or deleted, and
//! the user is `system:bootstrap:<id>` in `system:bootstrappers` plus the Secret's
//! `auth-extra-groups` (each of which must itself start with `system:bootstrappers:`).

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;

use crate::authn::{TokenAuthenticator, UserInfo};
use crate::registry::Registry;

/// The namespace bootstrap-token Secrets live in.
pub const NAMESPACE: &str = "kube-system";
/// The Secret type of a bootstrap token.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// A Secret's name is this followed by the token id.
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// The group every bootstrap token's user is in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The extra group `nanokube token create` gives (kubeadm's, so that the bindings kubeadm
/// clusters have, and tokens kubeadm made, mean the same here).
pub const DEFAULT_NODE_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// A token split into its public id and its secret (`[a-z0-9]{6}.[a-z0-9]{16}`), or
/// `None` when the text is not a bootstrap token at all.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// A new token `<id>.<secret>` from the operating system's random source (uuid v4's),
/// each character drawn evenly from `[a-z0-9]`.
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(23);
    while out.len() < 23 {
        for b in uuid::Uuid::new_v4().as_bytes().iter() {
            // Below 252 (7 × 36) every character is equally likely; the rest are dropped.
            if *b < 252 && out.len() < 23 {
                if out.len() == 6 {
                    out.push('.');
                }
                out.push(ALPHABET[usize::from(*b) % 36] as char);
            }
        }
    }
    out
}

/// The Secret that holds `token` (as `nanokube token create` and `kubeadm token create`
/// write it): usable to authenticate and to sign `cluster-info`, `ttl_seconds` from now
/// (0: never expires), in `groups` (each `system:bootstrappers:…`).
pub fn secret_for(token: &str, ttl_seconds: u64, description: &str, groups: &[String]) -> Option<Value> {
    let (id, secret) = parse_token(token)?;
    let mut data = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.into(), Value::String(base64::engine::general_purpose::STANDARD.encode(v)));
    };
    put("token-id", id);
    put("token-secret", secret);
    put("usage-bootstrap-authentication", "true");
    put("usage-bootstrap-signing", "true");
    if !groups.is_empty() {
        put("auth-extra-groups", &groups.join(","));
    }
    if !description.is_empty() {
        put("description", description);
    }
    if ttl_seconds > 0 {
        let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(i64::MAX / 2));
        put("expiration", &nanokube_api::meta::format_time(at));
    }
    Some(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{SECRET_PREFIX}{id}"), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "data": data,
    }))
}

/// The ConfigMap in `kube-public` that tells a joining node where the cluster is and
/// which CA it has, signed with each signing token (kubeadm's discovery).
pub const CLUSTER_INFO: &str = "cluster-info";
/// A token's signature of `cluster-info`'s kubeconfig is kept under this plus its id.
pub const SIGNATURE_PREFIX: &str = "jws-kubeconfig-";

/// The detached JWS (RFC 7515 appendix F: `header..signature`) of `content`, HS256 with
/// the token's secret as key and its id as `kid`, byte for byte what upstream's
/// `ComputeDetachedSignature` (go-jose) makes, so kubeadm can check ours and we theirs.
pub fn detached_signature(content: &str, id: &str, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // go-jose writes the protected header as a JSON object with sorted keys.
    let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "HS256", "kid": id}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(content);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{header}.{payload}").as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The kubeconfig `cluster-info` carries: the cluster's address and CA, no user (the
/// layout kubeadm writes).
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
    )
}

fn cluster_binding(name: &str, role: &str, group: &str) -> Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    })
}

/// What kubeadm's init (its `bootstrap-token` phase) adds so that nodes can join with a
/// token, as (API path to POST to, object): the bindings letting the token group
/// `system:bootstrappers:kubeadm:default-node-token` create CSRs, have its node-client
/// requests approved and read nodes, and `system:nodes` have renewals approved; the
/// `cluster-info` ConfigMap in `kube-public` (`server`'s address and CA) with the Role and
/// RoleBinding letting `system:anonymous` read it.
pub fn join_objects(server: &str, ca_pem: &str) -> Vec<(&'static str, Value)> {
    let bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";
    let public = "/api/v1/namespaces/kube-public/configmaps";
    vec![
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "kubeadm:get-nodes"},
                               "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
        ),
        (bindings, cluster_binding("kubeadm:get-nodes", "kubeadm:get-nodes", DEFAULT_NODE_GROUP)),
        (bindings, cluster_binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", DEFAULT_NODE_GROUP)),
        (
            bindings,
            cluster_binding("kubeadm:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", DEFAULT_NODE_GROUP),
        ),
        (
            bindings,
            cluster_binding(
                "kubeadm:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                "system:nodes",
            ),
        ),
        (
            public,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CLUSTER_INFO, "namespace": "kube-public"},
                               "data": {"kubeconfig": cluster_info_kubeconfig(server, ca_pem)}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-public/roles",
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                               "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
                               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CLUSTER_INFO], "verbs": ["get"]}]}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-public/rolebindings",
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                               "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
                               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeadm:bootstrap-signer-clusterinfo"},
                               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]}),
        ),
    ]
}

/// A Secret `data` value as text (empty when absent or not base64 of UTF-8).
pub fn data_field(secret: &Value, key: &str) -> String {
    secret
        .pointer(&format!("/data/{key}"))
        .and_then(Value::as_str)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .unwrap_or_default()
}

/// Seconds since the epoch of a token's `expiration` (RFC 3339); `None` when it has none,
/// `Some(i64::MIN)` when it cannot be read (upstream treats that as expired).
pub fn expiration(secret: &Value) -> Option<i64> {
    let text = data_field(secret, "expiration");
    if text.is_empty() {
        return None;
    }
    Some(nanokube_api::meta::parse_time(&text).map_or(i64::MIN, |t| t.unix_timestamp()))
}

/// Compares every byte whatever the first difference (the length is public: always 16).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bootstrap-token authenticator.
pub struct BootstrapTokenAuthenticator {
    /// Where the token Secrets are read (the registry's in-memory index).
    pub registry: Arc<Registry>,
}

impl BootstrapTokenAuthenticator {
    fn check(&self, id: &str, secret: &str) -> Result<UserInfo, ()> {
        let def = nanokube_api::resources::find("", "v1", "secrets").ok_or(())?;
        let obj = self.registry.get(def, NAMESPACE, &format!("{SECRET_PREFIX}{id}")).map_err(|_| ())?;
        let s = obj.value();
        if s.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) || s.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
            return Err(());
        }
        if !constant_time_eq(data_field(s, "token-secret").as_bytes(), secret.as_bytes()) || data_field(s, "token-id") != id {
            return Err(());
        }
        if expiration(s).is_some_and(|at| at <= time::OffsetDateTime::now_utc().unix_timestamp()) {
            return Err(());
        }
        if data_field(s, "usage-bootstrap-authentication") != "true" {
            return Err(());
        }
        let mut groups = vec![BOOTSTRAPPERS.to_string()];
        for g in data_field(s, "auth-extra-groups").split(',').map(str::trim).filter(|g| !g.is_empty()) {
            // A Secret naming groups outside the bootstrappers' is refused whole, as upstream.
            if !g.starts_with("system:bootstrappers:") {
                return Err(());
            }
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_string());
            }
        }
        Ok(UserInfo::authenticated(format!("system:bootstrap:{id}"), "", groups))
    }
}

impl TokenAuthenticator for BootstrapTokenAuthenticator {
    fn authenticate(&self, token: &str) -> Option<Result<UserInfo, ()>> {
        let (id, secret) = parse_token(token)?;
        Some(self.check(id, secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_upstreams() {
        // kubeadm's own test vector (cmd/kubeadm dry-run client): its cluster-info
        // kubeconfig signed with token abcdef.abcdef0123456789.
        let ca = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSURCVENDQWUyZ0F3SUJBZ0lJTkpmdGFCK09Xd0F3RFFZSktvWklodmNOQVFFTEJRQXdGVEVUTUJFR0ExVUUKQXhNS2EzVmlaWEp1WlhSbGN6QWVGdzB5TkRBM01EZ3hNalF3TURSYUZ3MHpOREEzTURZeE1qUTFNRFJhTUJVeApFekFSQmdOVkJBTVRDbXQxWW1WeWJtVjBaWE13Z2dFaU1BMEdDU3FHU0liM0RRRUJBUVVBQTRJQkR3QXdnZ0VLCkFvSUJBUURhUURkaWdPeVdpbTZXLzQ4bjNQSG9WZVZCU2lkNldjbmRFV3VVcTVnQldYZGx0OTk2aCtWbkl0bHQKOHpDaGwvb1I1V2ZSYVJDODA1WitvTW4vWThJR1ZRM3QxaG55SW1ZbjR3M3Z6UlhvdUdlQmVpdTJTU1ZqZ0J3agpYanliYk1DbXJBZEljYkllWm1INjZldjV6KzVZS21aUlVZYzNoRGFIcFhkMEVFblp5SlY1d2FaczBYTVFVSE03CmVxT1pBWko5L21PM05VQnBsdnJQbnBPTUs3a1NFUFBnNzVjVTdXSG9KSEZrZVlXNTkzZ3NnQ3MyQnRVdTY0Y3EKYlZYOWJpZ3JZZGRwWmtvRUtLeFU4SEl3SHNJNVY4Um9uM21LRkdsckUxN2IybC84Q3FtQXVPdnl6TEllaVFHWAplZ0lhUi9uUkhISUQ5QVRpNnRYOEVhRERwZXYvQWdNQkFBR2pXVEJYTUE0R0ExVWREd0VCL3dRRUF3SUNwREFQCkJnTlZIUk1CQWY4RUJUQURBUUgvTUIwR0ExVWREZ1FXQkJRWWFDRGU2eXVWcVNhV1Y3M3pMaldtR2hpYVR6QVYKQmdOVkhSRUVEakFNZ2dwcmRXSmxjbTVsZEdWek1BMEdDU3FHU0liM0RRRUJDd1VBQTRJQkFRQ2NlTW5uaVBhcQpHUkVqR3A2WFJTN1FFWW1RcmJFZCtUVjVKUTE4byttVzZvR3BaOENBM0pBSFFETk5QRW1QYzB5dVhEeE85QkZYCmJnMlhSSCtLTkozVzJKZlExVEgzVFhKRWF4Zkh1WDRtQjU5UkNsQzExNGtsV2RIeDFqN0FtRWt1eTZ0ZGpuYWkKZmh0U0dueEEwM2JwN2I4Z28zSWpXNE5wV1JOMVdHNTl2YTBKOEJIRmg3Q0RpZUxuK0RNdUk2M0Jna1kveTJzMApML2RtOVBmcWdVSzFBMy8wZGhDVjZiRUNqekEzSkJld21kSC8rVUJPeVkybUMwNVlQMzNkMHA5eXlrYmtkWE5xCkRONXlBc3ZNUC9PV0NuQjFlQlFUb2pNODJMU3F3dHZtbU1SNHRXYXVoOXVkVktHY2s0eEJaV3Vkcm5LRFVVWEkKUURNUFJnSkMvTng0Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
        let kubeconfig = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://192.168.0.101:6443\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\nusers: null\n"
        );
        assert_eq!(
            detached_signature(&kubeconfig, "abcdef", "abcdef0123456789"),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..rh3cVKiU2mdt3CqHzC81sNE-4WQLRHMtXduHWfSbrIM"
        );
    }

    #[test]
    fn only_the_token_shape_is_taken() {
        assert_eq!(parse_token("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        assert_eq!(parse_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse_token("abcdef.0123456789abcde"), None);
        assert_eq!(parse_token("abcdef0123456789abcdef"), None);
        assert_eq!(parse_token("eyJhbGciOi.x.y"), None);
        for _ in 0..50 {
            assert!(parse_token(&generate()).is_some());
        }
        assert_ne!(generate(), generate());
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"ab", b"abc"));
    }
}
