//! `nanokube token create|list|delete`: bootstrap tokens, as `kubeadm token` keeps them
//! (Secrets `bootstrap-token-<id>` in `kube-system`), written through the API with the
//! caller's kubeconfig. A node presents one to join: it authenticates as
//! `system:bootstrap:<id>` and may then ask for its client certificate.

use bytes::Bytes;
use nanokube_apiserver::bootstrap_token::{self, NAMESPACE, SECRET_PREFIX, SECRET_TYPE};
use serde_json::Value;

use crate::client::ApiClient;

const SECRETS: &str = "/api/v1/namespaces/kube-system/secrets";

fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// Make what kubeadm's init makes for tokens, where it is missing: the bindings that let
/// token holders join, and `cluster-info` for `server` and the CA `ca_pem`.
pub async fn ensure_join_objects(client: &ApiClient, server: &str, ca_pem: &str) -> Result<(), String> {
    for (path, obj) in bootstrap_token::join_objects(server, ca_pem) {
        let body = Bytes::from(serde_json::to_vec(&obj).map_err(|e| e.to_string())?);
        let (code, resp) = client.request("POST", path, Some("application/json"), Some("application/json"), body).await?;
        if code != 201 && code != 409 {
            return Err(format!(
                "creating {} {}: {code}: {}",
                obj["kind"].as_str().unwrap_or(""),
                obj["metadata"]["name"].as_str().unwrap_or(""),
                status_message(&resp)
            ));
        }
    }
    Ok(())
}

/// What `nanokube token create` asks for.
pub struct NewToken<'a> {
    /// The token, or `None` for a new random one.
    pub token: Option<&'a str>,
    /// How long it lasts (0: forever).
    pub ttl_seconds: u64,
    /// A note kept with it.
    pub description: &'a str,
    /// Its user's extra groups.
    pub groups: &'a [String],
}

/// Create a token as `new` asks, first making what joining needs where it is missing
/// ([`ensure_join_objects`] for `server` and `ca_pem`); returns the token.
pub async fn create(client: &ApiClient, new: &NewToken<'_>, server: &str, ca_pem: &str) -> Result<String, String> {
    let token = match new.token {
        Some(t) => t.to_string(),
        None => bootstrap_token::generate(),
    };
    if let Some(bad) = new.groups.iter().find(|g| !g.starts_with("system:bootstrappers:")) {
        return Err(format!("group {bad:?} must start with \"system:bootstrappers:\""));
    }
    let secret = bootstrap_token::secret_for(&token, new.ttl_seconds, new.description, new.groups)
        .ok_or_else(|| format!("{token:?} is not a bootstrap token: it must match [a-z0-9]{{6}}.[a-z0-9]{{16}}"))?;
    ensure_join_objects(client, server, ca_pem).await?;
    let body = Bytes::from(serde_json::to_vec(&secret).map_err(|e| e.to_string())?);
    let (code, resp) = client.request("POST", SECRETS, Some("application/json"), Some("application/json"), body).await?;
    if code != 201 {
        return Err(format!("creating the token's Secret: {code}: {}", status_message(&resp)));
    }
    Ok(token)
}

/// The tokens, one line each as `kubeadm token list` prints them.
pub async fn list(client: &ApiClient) -> Result<Vec<String>, String> {
    let path = format!("{SECRETS}?fieldSelector=type%3D{}", SECRET_TYPE.replace('/', "%2F"));
    let (code, resp) = client.request("GET", &path, None, Some("application/json"), Bytes::new()).await?;
    if code != 200 {
        return Err(format!("listing tokens: {code}: {}", status_message(&resp)));
    }
    let list: Value = serde_json::from_slice(&resp).map_err(|e| e.to_string())?;
    let mut out = vec![format!("{:<24}{:<10}{:<22}{:<26}{:<28}{}", "TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS")];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for s in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        let field = |k: &str| bootstrap_token::data_field(s, k);
        let id = field("token-id");
        let (ttl, expires) = match bootstrap_token::expiration(s) {
            None => ("<forever>".to_string(), "<never>".to_string()),
            Some(at) => (
                if at <= now { "<invalid>".to_string() } else { nanokube_api::meta::human_duration(at - now) },
                time::OffsetDateTime::from_unix_timestamp(at).map(nanokube_api::meta::format_time).unwrap_or_default(),
            ),
        };
        let usages: Vec<&str> = ["authentication", "signing"].into_iter().filter(|u| field(&format!("usage-bootstrap-{u}")) == "true").collect();
        let desc = field("description");
        out.push(format!(
            "{:<24}{:<10}{:<22}{:<26}{:<28}{}",
            format!("{id}.{}", field("token-secret")),
            ttl,
            expires,
            usages.join(","),
            if desc.is_empty() { "<none>".into() } else { desc },
            field("auth-extra-groups")
        ));
    }
    Ok(out)
}

/// Delete a token, named by its id or whole.
pub async fn delete(client: &ApiClient, token_or_id: &str) -> Result<(), String> {
    let id = bootstrap_token::parse_token(token_or_id).map(|(id, _)| id).unwrap_or(token_or_id);
    if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(format!("{token_or_id:?} is neither a token nor a token id ([a-z0-9]{{6}})"));
    }
    let (code, resp) = client.request("DELETE", &format!("/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET_PREFIX}{id}"), None, None, Bytes::new()).await?;
    match code {
        200 | 202 => Ok(()),
        404 => Err(format!("bootstrap token {id:?} not found")),
        _ => Err(format!("deleting token {id}: {code}: {}", status_message(&resp))),
    }
}
