//! Image references, normalized as containerd and Docker do: `busybox` is
//! `docker.io/library/busybox:latest`, `me/app` is `docker.io/me/app:latest`, a first
//! component with a `.` or `:` (or `localhost`) is a registry, and a digest pins the
//! content (`name@sha256:...`).

use std::fmt;

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (and port): `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// The repository path: `library/busybox`.
    pub repository: String,
    /// The tag, unless only a digest was given.
    pub tag: Option<String>,
    /// `sha256:...`, when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse and normalize `text`.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty image reference".into());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| format!("invalid reference {text:?}: unsupported digest algorithm"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(format!("invalid reference {text:?}: invalid checksum digest format"));
                }
                (r, Some(d.to_string()))
            }
            None => (text, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => (first.to_string(), path.to_string()),
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" { "docker.io".to_string() } else { registry };
        let repository = if registry == "docker.io" && !repository.contains('/') { format!("library/{repository}") } else { repository };
        let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
        if !valid(&repository) || repository.starts_with('/') || repository.ends_with('/') {
            return Err(format!("invalid reference format: repository name ({repository}) must be lowercase"));
        }
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(format!("invalid reference format: {text:?}"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_as_containerd_does() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app", "docker.io/me/app:latest"),
            ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
            ("127.0.0.1:5000/tools/box:v2", "127.0.0.1:5000/tools/box:v2"),
            ("localhost/x", "localhost/x:latest"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ] {
            assert_eq!(Reference::parse(given).unwrap().to_string(), want, "{given}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Reference::parse(&format!("busybox@{d}")).unwrap().to_string(), format!("docker.io/library/busybox@{d}"));
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("busybox@sha256:xyz").is_err());
    }
}
