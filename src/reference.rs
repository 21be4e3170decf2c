//! Docker image references: `[domain[:port]/]path[:tag][@digest]`.

use anyhow::Result;

use crate::registry::path::{valid_name, valid_tag, Digest};

/// A reference Docker would not accept (or `dos pull` can't tag): a usage
/// error, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {given:?}: {why}")]
pub struct InvalidReference {
    pub given: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, if the reference names one.
    pub domain: Option<String>,
    /// Repository path, e.g. `app` or `team/app`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let bad = |why: &str| {
            anyhow::Error::new(InvalidReference {
                given: s.to_string(),
                why: why.to_string(),
            })
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if Digest::parse(d).is_none() {
                    return Err(bad("the digest must be sha256:<64 hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(bad("invalid tag"));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, p))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), p)
            }
            _ => (None, name),
        };
        if !valid_name(path) {
            return Err(bad(
                "the name must be lowercase letters, digits and separators (. _ __ -), with / between components",
            ));
        }
        if let Some(d) = &domain {
            if d.is_empty() || d.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(bad("invalid registry host"));
            }
        }
        Ok(ImageRef {
            domain,
            path: path.to_string(),
            tag,
            digest,
        })
    }

    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The repository as Docker names it locally (domain included when given).
    pub fn repository(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// A canonical form for comparing what two sides mean:
    /// `docker.io/library/app:latest` for `app`.
    pub fn canonical(&self) -> String {
        let (domain, path) = match self.domain.as_deref() {
            None | Some("docker.io") | Some("index.docker.io") => {
                let p = if self.path.contains('/') {
                    self.path.clone()
                } else {
                    format!("library/{}", self.path)
                };
                ("docker.io", p)
            }
            Some(d) => (d, self.path.clone()),
        };
        let mut s = format!("{domain}/{path}");
        if self.tag.is_some() || self.digest.is_none() {
            s.push(':');
            s.push_str(self.tag_or_latest());
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// Do two references name the same image?
    pub fn same_as(&self, other: &ImageRef) -> bool {
        self.canonical() == other.canonical()
    }

    /// References a `dos pull` can create: a tag, no digest.
    pub fn require_taggable(&self, original: &str) -> Result<()> {
        if self.digest.is_some() {
            return Err(InvalidReference {
                given: original.to_string(),
                why: "it names a digest; dos pull needs a tag to give the image (e.g. app:1)"
                    .into(),
            }
            .into());
        }
        Ok(())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository())?;
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
    fn parses_common_forms() {
        let r = ImageRef::parse("app:1").unwrap();
        assert_eq!(
            (r.domain, r.path.as_str(), r.tag.as_deref()),
            (None, "app", Some("1"))
        );
        let r = ImageRef::parse("localhost:5000/team/app").unwrap();
        assert_eq!(r.domain.as_deref(), Some("localhost:5000"));
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag, None);
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/o/app:2@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("2"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn canonical_forms_compare() {
        let a = ImageRef::parse("app").unwrap();
        for same in ["app:latest", "docker.io/library/app", "library/app:latest"] {
            assert!(a.same_as(&ImageRef::parse(same).unwrap()), "{same}");
        }
        assert!(!a.same_as(&ImageRef::parse("app:2").unwrap()));
        assert!(!a.same_as(&ImageRef::parse("other/app").unwrap()));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "App:1",
            "app:",
            "app:-x",
            "app@sha256:zz",
            "a b",
            "/app",
            "app/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
