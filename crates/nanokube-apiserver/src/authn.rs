//! Authentication: who is calling. x509 client certificates (CN = user, O = groups),
//! bearer tokens (static token file; service-account tokens plug in as another
//! [`TokenAuthenticator`]) and anonymous requests, in upstream's order.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use nanokube_api::ApiError;

/// The authenticated identity of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name, e.g. `system:serviceaccount:default:default`.
    pub name: String,
    /// UID, may be empty.
    pub uid: String,
    /// Groups, including `system:authenticated` or `system:unauthenticated`.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The superuser group, allowed everything ahead of any authorizer.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Group of anonymous requests.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

impl UserInfo {
    /// The anonymous user.
    pub fn anonymous() -> Self {
        UserInfo { name: "system:anonymous".into(), groups: vec![UNAUTHENTICATED.into()], ..Default::default() }
    }

    /// A user with `system:authenticated` appended to its groups.
    pub fn authenticated(name: impl Into<String>, uid: impl Into<String>, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo { name: name.into(), uid: uid.into(), groups, extra: BTreeMap::new() }
    }

    /// The `UserInfo` JSON that reviews and audit events carry.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = serde_json::json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }

    /// Whether the user is in a group.
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// A bearer-token authenticator.
pub trait TokenAuthenticator: Send + Sync {
    /// `None`: not a token of this kind; `Some(Ok)`: the user; `Some(Err)`: invalid.
    fn authenticate(&self, token: &str) -> Option<Result<UserInfo, ()>>;

    /// Authenticate for a TokenReview's `audiences` (empty: the API server's own,
    /// `api_audiences`), returning the user and the audiences the token is good for: the
    /// intersection of the requested ones with the token's. This default is for tokens
    /// that carry no audience (static tokens), which are good for the API's audiences
    /// only, as upstream's audience-agnostic wrapper treats them.
    fn authenticate_for(&self, token: &str, audiences: &[String], api_audiences: &[String]) -> Option<Result<(UserInfo, Vec<String>), ()>> {
        let user = self.authenticate(token)?;
        let wanted = if audiences.is_empty() { api_audiences } else { audiences };
        let common: Vec<String> = wanted.iter().filter(|a| api_audiences.contains(a)).cloned().collect();
        Some(match user {
            Ok(u) if !common.is_empty() => Ok((u, common)),
            _ => Err(()),
        })
    }
}

/// Tokens from a `--token-auth-file`: CSV lines `token,user,uid,"group1,group2"`.
#[derive(Debug, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, UserInfo>,
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl StaticTokens {
    /// Parse the token file format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rec = split_csv(line);
            if rec.len() < 3 {
                return Err(format!("token file line {}: need at least 3 columns (token,user,uid), got {}", i + 1, rec.len()));
            }
            let groups = rec.get(3).map(|g| g.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()).unwrap_or_default();
            tokens.insert(rec[0].trim().to_string(), UserInfo::authenticated(rec[1].trim(), rec[2].trim(), groups));
        }
        Ok(StaticTokens { tokens })
    }

    /// Load a token file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text)
    }
}

impl TokenAuthenticator for StaticTokens {
    fn authenticate(&self, token: &str) -> Option<Result<UserInfo, ()>> {
        self.tokens.get(token).map(|u| Ok(u.clone()))
    }
}

/// The identity carried by a verified client certificate, extracted at TLS handshake.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some(UserInfo::authenticated(cn, "", groups))
}

/// The chain of authenticators.
pub struct Authenticator {
    /// Token authenticators tried in order.
    pub tokens: Vec<Arc<dyn TokenAuthenticator>>,
    /// Whether unauthenticated requests become `system:anonymous` (else 401).
    pub anonymous: bool,
}

impl Authenticator {
    /// Authenticate a request from its certificate identity and `Authorization` header.
    pub fn authenticate(&self, cert_user: Option<&UserInfo>, authorization: Option<&str>) -> Result<UserInfo, ApiError> {
        if let Some(u) = cert_user {
            return Ok(u.clone());
        }
        if let Some(h) = authorization {
            let h = h.trim();
            let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                let token = rest.trim();
                if token.is_empty() {
                    return Err(ApiError::unauthorized());
                }
                for a in &self.tokens {
                    match a.authenticate(token) {
                        Some(Ok(u)) => return Ok(u),
                        Some(Err(())) => return Err(ApiError::unauthorized()),
                        None => {}
                    }
                }
                return Err(ApiError::unauthorized());
            }
            // Basic auth and other schemes are not supported, as in current upstream.
            return Err(ApiError::unauthorized());
        }
        if self.anonymous {
            Ok(UserInfo::anonymous())
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let t = StaticTokens::parse("abc,alice,1,\"devs,ops\"\n# c\nxyz,bob,2\n").unwrap();
        let a = t.authenticate("abc").unwrap().unwrap();
        assert_eq!(a.name, "alice");
        assert_eq!(a.groups, vec!["devs", "ops", AUTHENTICATED]);
        assert_eq!(t.authenticate("xyz").unwrap().unwrap().groups, vec![AUTHENTICATED]);
        assert!(t.authenticate("nope").is_none());
        assert!(StaticTokens::parse("only,two").is_err());
    }

    #[test]
    fn bearer_is_case_insensitive_and_bad_tokens_are_401() {
        let a = Authenticator { tokens: vec![Arc::new(StaticTokens::parse("abc,alice,1").unwrap())], anonymous: true };
        assert_eq!(a.authenticate(None, Some("bearer abc")).unwrap().name, "alice");
        assert_eq!(a.authenticate(None, Some("Bearer  abc ")).unwrap().name, "alice");
        assert_eq!(a.authenticate(None, Some("Bearer bad")).unwrap_err().code, 401);
        assert_eq!(a.authenticate(None, None).unwrap().name, "system:anonymous");
    }
}
