//! Service-account tokens: issuing them (legacy Secret tokens, TokenRequest-bound
//! tokens) and authenticating them. JWTs are ES256, signed with the cluster's
//! service-account key (`sa.key`, ECDSA P-256), `kid` = base64url(SHA-256(public key
//! DER)) as upstream computes it. The OIDC discovery documents describe the same key.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use nanokube_api::{meta, resources};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde_json::{json, Value};

use crate::authn::{TokenAuthenticator, UserInfo};
use crate::registry::Registry;

/// The issuer of legacy Secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// An object a token is bound to.
#[derive(Debug, Clone)]
pub struct BoundObject {
    /// `Pod`, `Secret` or `Node`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// For a pod: the name and uid of the node it is bound to (ServiceAccountTokenPodNodeInfo,
    /// on by default since 1.30), embedded as the `kubernetes.io.node` claim.
    pub node: Option<(String, String)>,
}

/// Signs and describes service-account tokens.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwk: Value,
    /// `iss` of bound tokens, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// Audiences the API server accepts (default: the issuer).
    pub api_audiences: Vec<String>,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl TokenIssuer {
    /// An issuer for the PKCS#8 ECDSA P-256 key `sa.key` and its public key `sa.pub`.
    pub fn new(sa_key_pem: &str, sa_pub_pem: &str, issuer: &str) -> Result<Self, String> {
        let encoding = EncodingKey::from_ec_pem(sa_key_pem.as_bytes()).map_err(|e| format!("sa.key: {e}"))?;
        let decoding = DecodingKey::from_ec_pem(sa_pub_pem.as_bytes()).map_err(|e| format!("sa.pub: {e}"))?;
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(sa_pub_pem.as_bytes()).map_err(|e| format!("sa.pub: {e}"))?;
        let kid = b64url(ring::digest::digest(&ring::digest::SHA256, spki.as_ref()).as_ref());
        let key = rcgen::KeyPair::from_pem(sa_key_pem).map_err(|e| format!("sa.key: {e}"))?;
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("sa.key must be an ECDSA P-256 key".into());
        }
        let jwk = json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])});
        Ok(TokenIssuer { encoding, decoding, kid, jwk, issuer: issuer.to_string(), api_audiences: vec![issuer.to_string()] })
    }

    /// Sign any claims with the service-account key (the token path and its fuzzing use
    /// it; whoever holds the issuer holds the key anyway).
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("signing with a loaded key")
    }

    /// A legacy token for a `kubernetes.io/service-account-token` Secret (no expiry).
    pub fn legacy_token(&self, namespace: &str, sa_name: &str, sa_uid: &str, secret_name: &str) -> String {
        self.sign(&json!({
            "iss": LEGACY_ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{sa_name}"),
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret_name,
            "kubernetes.io/serviceaccount/service-account.name": sa_name,
            "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
        }))
    }

    /// A bound token (TokenRequest). Returns the token and its expiry (unix seconds).
    pub fn bound_token(
        &self,
        namespace: &str,
        sa_name: &str,
        sa_uid: &str,
        audiences: &[String],
        expiration_seconds: i64,
        bound: Option<&BoundObject>,
    ) -> (String, i64) {
        let iat = now();
        let exp = iat + expiration_seconds;
        let jti = uuid::Uuid::new_v4().to_string();
        let mut k8s = json!({"namespace": namespace, "serviceaccount": {"name": sa_name, "uid": sa_uid}});
        if let Some(b) = bound {
            k8s[b.kind.to_lowercase()] = json!({"name": b.name, "uid": b.uid});
            if let Some((name, uid)) = &b.node {
                k8s["node"] = json!({"name": name, "uid": uid});
            }
        }
        let aud: Vec<String> = if audiences.is_empty() { self.api_audiences.clone() } else { audiences.to_vec() };
        let token = self.sign(&json!({
            "iss": self.issuer, "sub": format!("system:serviceaccount:{namespace}:{sa_name}"),
            "aud": aud, "exp": exp, "iat": iat, "nbf": iat, "jti": jti, "kubernetes.io": k8s,
        }));
        (token, exp)
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self, server_url: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{server_url}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// Authenticates service-account tokens against the store: the ServiceAccount (and a
/// legacy token's Secret, a bound token's Pod or Secret) must still exist with the uid
/// the token names.
pub struct ServiceAccountAuthenticator {
    /// The issuer whose key verifies tokens.
    pub issuer: Arc<TokenIssuer>,
    /// Where ServiceAccounts, Secrets and Pods are looked up.
    pub registry: Arc<Registry>,
}

fn claim<'a>(c: &'a Value, k: &str) -> &'a str {
    c.get(k).and_then(Value::as_str).unwrap_or("")
}

impl ServiceAccountAuthenticator {
    fn object_uid(&self, plural: &str, ns: &str, name: &str) -> Option<String> {
        let def = resources::find("", "v1", plural)?;
        self.registry.get(def, ns, name).ok().map(|o| meta::uid(&o).to_string())
    }

    /// Verify a token for `wanted` audiences; the user and the audiences (of those) the
    /// token carries. Legacy tokens carry none: they are good for the API's audiences.
    fn verify(&self, token: &str, wanted: &[String]) -> Option<Result<(UserInfo, Vec<String>), ()>> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(self.issuer.kid.as_str()) {
            return None;
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.leeway = 0;
        let claims: Value = match jsonwebtoken::decode::<Value>(token, &self.issuer.decoding, &v) {
            Ok(d) => d.claims,
            Err(_) => return Some(Err(())),
        };
        // Time claims must be JSON integers, as upstream's NumericDate: one given as a
        // string or a fraction is not a time this token can be trusted to carry.
        let t = now();
        let time_claim = |k: &str| -> Result<Option<i64>, ()> {
            match claims.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(()),
                Some(_) => Err(()),
            }
        };
        let (Ok(exp), Ok(nbf)) = (time_claim("exp"), time_claim("nbf")) else { return Some(Err(())) };
        if exp.is_some_and(|exp| exp <= t) || nbf.is_some_and(|nbf| nbf > t + 60) {
            return Some(Err(()));
        }
        let api = &self.issuer.api_audiences;
        Some(match claim(&claims, "iss") {
            LEGACY_ISSUER => {
                let common: Vec<String> = wanted.iter().filter(|a| api.contains(a)).cloned().collect();
                if common.is_empty() {
                    Err(())
                } else {
                    self.legacy(&claims, token).map(|u| (u, common))
                }
            }
            iss if iss == self.issuer.issuer => {
                let aud: Vec<String> = match claims.get("aud") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
                    _ => vec![],
                };
                let common: Vec<String> = wanted.iter().filter(|a| aud.contains(a)).cloned().collect();
                if common.is_empty() {
                    Err(())
                } else {
                    self.bound(&claims).map(|u| (u, common))
                }
            }
            _ => Err(()),
        })
    }

    fn legacy(&self, c: &Value, token: &str) -> Result<UserInfo, ()> {
        let ns = claim(c, "kubernetes.io/serviceaccount/namespace");
        let sa = claim(c, "kubernetes.io/serviceaccount/service-account.name");
        let uid = claim(c, "kubernetes.io/serviceaccount/service-account.uid");
        let secret = claim(c, "kubernetes.io/serviceaccount/secret.name");
        if self.object_uid("serviceaccounts", ns, sa).as_deref() != Some(uid) || uid.is_empty() {
            return Err(());
        }
        let def = resources::find("", "v1", "secrets").ok_or(())?;
        let s = self.registry.get(def, ns, secret).map_err(|_| ())?;
        if s.pointer("/metadata/annotations/kubernetes.io~1service-account.uid").and_then(Value::as_str) != Some(uid) {
            return Err(());
        }
        // The Secret must still be the token Secret that holds this very token: an Opaque
        // Secret made later under the same name and annotation does not revive it.
        if s.get("type").and_then(Value::as_str) != Some("kubernetes.io/service-account-token") {
            return Err(());
        }
        let held = s.pointer("/data/token").and_then(Value::as_str).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        if held.as_deref() != Some(token.as_bytes()) {
            return Err(());
        }
        Ok(sa_user(ns, sa, uid, BTreeMap::new()))
    }

    fn bound(&self, c: &Value) -> Result<UserInfo, ()> {
        let k = c.get("kubernetes.io").ok_or(())?;
        let ns = k.get("namespace").and_then(Value::as_str).unwrap_or("");
        let sa = k.pointer("/serviceaccount/name").and_then(Value::as_str).unwrap_or("");
        let uid = k.pointer("/serviceaccount/uid").and_then(Value::as_str).unwrap_or("");
        if uid.is_empty() || self.object_uid("serviceaccounts", ns, sa).as_deref() != Some(uid) {
            return Err(());
        }
        let mut extra = BTreeMap::new();
        for (kind, plural) in [("pod", "pods"), ("secret", "secrets")] {
            if let Some(b) = k.get(kind) {
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                let buid = b.get("uid").and_then(Value::as_str).unwrap_or("");
                if self.object_uid(plural, ns, name).as_deref() != Some(buid) {
                    return Err(());
                }
                if kind == "pod" {
                    extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![name.to_string()]);
                    extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![buid.to_string()]);
                }
            }
        }
        // The node of a pod-bound token: told, not checked (the pod's check binds it).
        if let Some(n) = k.get("node") {
            for (key, field) in [("authentication.kubernetes.io/node-name", "name"), ("authentication.kubernetes.io/node-uid", "uid")] {
                if let Some(v) = n.get(field).and_then(Value::as_str).filter(|v| !v.is_empty()) {
                    extra.insert(key.to_string(), vec![v.to_string()]);
                }
            }
        }
        if let Some(jti) = c.get("jti").and_then(Value::as_str) {
            extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={jti}")]);
        }
        Ok(sa_user(ns, sa, uid, extra))
    }
}

/// The node a pod is bound to, as a token bound to the pod names it: (name, uid); `None`
/// when the pod is not scheduled or its Node is not found (upstream then leaves the
/// claim out too).
pub fn pod_node(registry: &crate::registry::Registry, pod: &Value) -> Option<(String, String)> {
    let name = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())?;
    let node = registry.get(nanokube_api::resources::find("", "v1", "nodes")?, "", name).ok()?;
    Some((name.to_string(), node.value().pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string()))
}

/// The identity of a service account.
pub fn sa_user(ns: &str, name: &str, uid: &str, extra: BTreeMap<String, Vec<String>>) -> UserInfo {
    let mut u = UserInfo::authenticated(
        format!("system:serviceaccount:{ns}:{name}"),
        uid,
        vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}")],
    );
    u.extra = extra;
    u
}

impl TokenAuthenticator for ServiceAccountAuthenticator {
    fn authenticate(&self, token: &str) -> Option<Result<UserInfo, ()>> {
        Some(self.verify(token, &self.issuer.api_audiences)?.map(|(u, _)| u))
    }

    fn authenticate_for(&self, token: &str, audiences: &[String], api_audiences: &[String]) -> Option<Result<(UserInfo, Vec<String>), ()>> {
        self.verify(token, if audiences.is_empty() { api_audiences } else { audiences })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> TokenIssuer {
        let k = rcgen::KeyPair::generate().unwrap();
        TokenIssuer::new(&k.serialize_pem(), &k.public_key_pem(), "https://kubernetes.default.svc.cluster.local").unwrap()
    }

    #[test]
    fn tokens_verify_with_the_published_key_only() {
        let i = issuer();
        let (t, exp) = i.bound_token("ns", "sa", "u1", &[], 3600, None);
        assert!(exp > now());
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some(i.kid.as_str()));
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["https://kubernetes.default.svc.cluster.local"]);
        let c = jsonwebtoken::decode::<Value>(&t, &i.decoding, &v).unwrap().claims;
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        // Another key's token does not verify.
        let other = issuer();
        assert!(jsonwebtoken::decode::<Value>(&t, &other.decoding, &v).is_err());
        assert_eq!(i.jwks()["keys"][0]["crv"], "P-256");
    }
}
