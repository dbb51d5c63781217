//! The service-account token controller, as upstream ran it before 1.24 (and as the seed
//! walks through it): every ServiceAccount gets a `kubernetes.io/service-account-token`
//! Secret named `<sa>-token-<5 chars>` (unless turned off), every Secret of that type that
//! names a ServiceAccount is filled with `token`, `ca.crt` and `namespace`, and deleting a
//! ServiceAccount deletes its token Secrets.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use nanokube_apiserver::satoken::TokenIssuer;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

/// The Secret type of service-account tokens.
pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

fn def(plural: &str) -> &'static ResourceDef {
    resources::find("", "v1", plural).expect("core resource")
}

fn annotation<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str).unwrap_or("")
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The controller.
pub struct TokenController {
    registry: Arc<Registry>,
    issuer: Arc<TokenIssuer>,
    ca_pem: String,
    /// Create a token Secret for every ServiceAccount.
    auto_create: bool,
}

enum Work {
    ServiceAccount(String, String),
    Secret(String, String),
    All,
}

impl TokenController {
    /// A controller signing with `issuer` and embedding `ca_pem`.
    pub fn new(registry: Arc<Registry>, issuer: Arc<TokenIssuer>, ca_pem: String, auto_create: bool) -> Self {
        TokenController { registry, issuer, ca_pem, auto_create }
    }

    fn token_secrets_of(&self, ns: &str, sa: &str) -> Result<Vec<Value>, ApiError> {
        Ok(self
            .registry
            .list(def("secrets"), Some(ns), &ListOptions::default())?
            .items
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE) && annotation(s, NAME_ANNOTATION) == sa)
            .map(|s| s.to_value())
            .collect())
    }

    /// Reconcile one ServiceAccount.
    pub async fn reconcile_sa(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let sa = match self.registry.get(def("serviceaccounts"), ns, name) {
            Ok(sa) => sa,
            Err(e) if e.code == 404 => {
                for s in self.token_secrets_of(ns, name)? {
                    match self.registry.delete(def("secrets"), ns, meta::name(&s), &DeleteOptions::default()).await {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if meta::is_deleting(&sa) || !self.auto_create {
            return Ok(());
        }
        let uid = meta::uid(&sa).to_string();
        let existing: Vec<String> = self
            .token_secrets_of(ns, name)?
            .iter()
            .filter(|s| matches!(annotation(s, UID_ANNOTATION), "") || annotation(s, UID_ANNOTATION) == uid)
            .map(|s| meta::name(s).to_string())
            .collect();
        let secret_name = match existing.first() {
            Some(n) => n.clone(),
            None => {
                let secret = json!({
                    "metadata": {"name": format!("{name}-token-{}", meta::random_suffix(5)), "annotations": {NAME_ANNOTATION: name, UID_ANNOTATION: uid}},
                    "type": TOKEN_TYPE,
                });
                match self.registry.create(def("secrets"), ns, secret, &WriteOptions::default()).await {
                    Ok(s) => meta::name(&s).to_string(),
                    Err(e) if e.code == 403 || e.code == 404 => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        // List the token Secret on the ServiceAccount, as `kubectl get sa` shows it.
        self.registry
            .update_with(def("serviceaccounts"), ns, name, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                let mut refs: Vec<Value> = cur.get("secrets").and_then(Value::as_array).cloned().unwrap_or_default();
                refs.retain(|r| r.get("name").and_then(Value::as_str).is_some_and(|n| existing.iter().any(|e| e == n) || n == secret_name));
                if !refs.iter().any(|r| r.get("name").and_then(Value::as_str) == Some(secret_name.as_str())) {
                    refs.push(json!({"name": secret_name}));
                }
                next["secrets"] = json!(refs);
                meta::metadata_mut(&mut next).remove("resourceVersion");
                Ok(next)
            })
            .await
            .map(|_| ())
            .or_else(|e| if e.code == 404 { Ok(()) } else { Err(e) })
    }

    /// Reconcile one Secret.
    pub async fn reconcile_secret(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let secret = match self.registry.get(def("secrets"), ns, name) {
            Ok(s) => s,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        if secret.get("type").and_then(Value::as_str) != Some(TOKEN_TYPE) || meta::is_deleting(&secret) {
            return Ok(());
        }
        let sa_name = annotation(&secret, NAME_ANNOTATION).to_string();
        let sa = match self.registry.get(def("serviceaccounts"), ns, &sa_name) {
            Ok(sa) => sa,
            Err(e) if e.code == 404 => {
                // A token for a ServiceAccount that does not exist is deleted, as upstream does.
                return self.registry.delete(def("secrets"), ns, name, &DeleteOptions::default()).await.map(|_| ()).or_else(|e| {
                    if e.code == 404 {
                        Ok(())
                    } else {
                        Err(e)
                    }
                });
            }
            Err(e) => return Err(e),
        };
        let uid = meta::uid(&sa).to_string();
        let named_uid = annotation(&secret, UID_ANNOTATION);
        if !named_uid.is_empty() && named_uid != uid {
            return self.registry.delete(def("secrets"), ns, name, &DeleteOptions::default()).await.map(|_| ()).or_else(|e| {
                if e.code == 404 {
                    Ok(())
                } else {
                    Err(e)
                }
            });
        }
        let has_token = secret.pointer("/data/token").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
        if has_token && named_uid == uid {
            return Ok(());
        }
        let token = self.issuer.legacy_token(ns, &sa_name, &uid, name);
        let (ca, nsv) = (b64(&self.ca_pem), b64(ns));
        self.registry
            .update_with(def("secrets"), ns, name, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                meta::metadata_mut(&mut next).remove("resourceVersion");
                let ann = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
                ann[UID_ANNOTATION] = json!(uid);
                if !next.get("data").is_some_and(Value::is_object) {
                    next["data"] = json!({});
                }
                next["data"]["token"] = json!(b64(&token));
                next["data"]["ca.crt"] = json!(ca);
                next["data"]["namespace"] = json!(nsv);
                Ok(next)
            })
            .await
            .map(|_| ())
            .or_else(|e| if e.code == 404 { Ok(()) } else { Err(e) })
    }

    async fn reconcile_all(&self) -> Result<(), ApiError> {
        for sa in self.registry.list(def("serviceaccounts"), None, &ListOptions::default())?.items {
            self.reconcile_sa(meta::namespace(&sa), meta::name(&sa)).await?;
        }
        for s in self.registry.list(def("secrets"), None, &ListOptions::default())?.items {
            if s.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE) {
                self.reconcile_secret(meta::namespace(&s), meta::name(&s)).await?;
            }
        }
        Ok(())
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
        let store = self.registry.store().clone();
        let start = store.current_revision();
        for (plural, is_sa) in [("serviceaccounts", true), ("secrets", false)] {
            let prefix = def(plural).key_prefix();
            let (tx, store, sd) = (tx.clone(), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                follow(store, &prefix, start, sd, |change| {
                    let Change::Event(ev) = change else {
                        return tx.send(Work::All).is_ok();
                    };
                    // Secrets matter only if they are token Secrets.
                    if !is_sa && memchr::memmem::find(&ev.kv.value, TOKEN_TYPE.as_bytes()).is_none() {
                        return true;
                    }
                    let rest = &ev.kv.key[prefix.len()..];
                    let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
                    let work = if is_sa { Work::ServiceAccount(ns.into(), name.into()) } else { Work::Secret(ns.into(), name.into()) };
                    tx.send(work).is_ok()
                })
                .await
            });
        }
        let _ = tx.send(Work::All);
        let mut sas: BTreeSet<(String, String)> = BTreeSet::new();
        let mut secrets: BTreeSet<(String, String)> = BTreeSet::new();
        let mut all = false;
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(w) = rx.recv() => {
                    let mut push = |w: Work| match w {
                        Work::ServiceAccount(ns, n) => { sas.insert((ns, n)); }
                        Work::Secret(ns, n) => { secrets.insert((ns, n)); }
                        Work::All => all = true,
                    };
                    push(w);
                    while let Ok(w) = rx.try_recv() {
                        push(w);
                    }
                }
                _ = retry.tick() => {}
            }
            if std::mem::take(&mut all) {
                if let Err(e) = self.reconcile_all().await {
                    tracing::warn!(error = %e, "token controller resync failed; will retry");
                    all = true;
                }
            }
            for (ns, n) in std::mem::take(&mut sas) {
                if let Err(e) = self.reconcile_sa(&ns, &n).await {
                    if e.code != 409 {
                        tracing::warn!(namespace = %ns, serviceaccount = %n, error = %e, "token controller");
                    }
                    sas.insert((ns, n));
                }
            }
            for (ns, n) in std::mem::take(&mut secrets) {
                if let Err(e) = self.reconcile_secret(&ns, &n).await {
                    if e.code != 409 {
                        tracing::warn!(namespace = %ns, secret = %n, error = %e, "token controller");
                    }
                    secrets.insert((ns, n));
                }
            }
        }
    }
}
