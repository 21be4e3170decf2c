//! Registry URL paths (OCI distribution spec, "endpoints").
//!
//! Repository names contain slashes, so a path is parsed from the right: the
//! last `/manifests/`, `/blobs/`, `/blobs/uploads/` or `/tags/list` decides
//! the route and everything between `/v2/` and it is the name.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>` (a tag or a digest).
    Manifest { name: String, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`: start an upload.
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`: an upload in progress.
    Upload { name: String, id: String },
    /// `/v2/<name>/tags/list`.
    Tags { name: String },
}

impl Route {
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Base => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Tags { name } => Some(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// A `sha256:<64 hex>` digest, the only algorithm this registry stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Digest(s.to_string()))
    }

    pub fn from_sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse a request path; `None` for anything that is not a registry route.
pub fn parse(path: &str) -> Option<Route> {
    if path == "/v2/" || path == "/v2" {
        return Some(Route::Base);
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return valid_name(name).then(|| Route::Tags { name: name.into() });
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        if !valid_name(name) {
            return None;
        }
        if id.is_empty() {
            return Some(Route::UploadStart { name: name.into() });
        }
        return valid_upload_id(id).then(|| Route::Upload {
            name: name.into(),
            id: id.into(),
        });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return valid_name(name).then(|| Route::UploadStart { name: name.into() });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return (valid_name(name))
            .then(|| Digest::parse(digest))
            .flatten()
            .map(|digest| Route::Blob {
                name: name.into(),
                digest,
            });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        if !valid_name(name) {
            return None;
        }
        let reference = if reference.contains(':') {
            Reference::Digest(Digest::parse(reference)?)
        } else if valid_tag(reference) {
            Reference::Tag(reference.into())
        } else {
            return None;
        };
        return Some(Route::Manifest {
            name: name.into(),
            reference,
        });
    }
    None
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn base() {
        assert_eq!(parse("/v2/"), Some(Route::Base));
        assert_eq!(parse("/v2"), Some(Route::Base));
        assert_eq!(parse("/v1/"), None);
    }

    #[test]
    fn manifests_by_tag_and_digest_with_slashed_names() {
        assert_eq!(
            parse("/v2/team/app/manifests/1.0"),
            Some(Route::Manifest {
                name: "team/app".into(),
                reference: Reference::Tag("1.0".into())
            })
        );
        assert_eq!(
            parse(&format!("/v2/app/manifests/{D}")),
            Some(Route::Manifest {
                name: "app".into(),
                reference: Reference::Digest(Digest::parse(D).unwrap())
            })
        );
        // A repository may itself be called "manifests": the last one wins.
        assert_eq!(
            parse("/v2/a/manifests/b/manifests/latest"),
            Some(Route::Manifest {
                name: "a/manifests/b".into(),
                reference: Reference::Tag("latest".into())
            })
        );
    }

    #[test]
    fn blobs_and_uploads() {
        assert_eq!(
            parse(&format!("/v2/a/b/blobs/{D}")),
            Some(Route::Blob {
                name: "a/b".into(),
                digest: Digest::parse(D).unwrap()
            })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/"),
            Some(Route::UploadStart { name: "a".into() })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads"),
            Some(Route::UploadStart { name: "a".into() })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/abc-123"),
            Some(Route::Upload {
                name: "a".into(),
                id: "abc-123".into()
            })
        );
        assert_eq!(
            parse("/v2/a/tags/list"),
            Some(Route::Tags { name: "a".into() })
        );
    }

    #[test]
    fn rejects_bad_names_digests_tags_and_traversal() {
        for bad in [
            "/v2/../etc/blobs/uploads/",
            "/v2/A/manifests/latest",
            "/v2/a//b/manifests/latest",
            "/v2/-a/manifests/latest",
            "/v2/a/manifests/-tag",
            "/v2/a/manifests/sha256:xyz",
            "/v2/a/manifests/md5:0123",
            "/v2/a/blobs/sha256:ABC",
            "/v2/a/blobs/uploads/../../x",
            "/v2/a/blobs/uploads/a%2f",
            "/v2/a/manifests/",
            "/v2//manifests/latest",
            "/v2/a...b/manifests/x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn name_grammar() {
        for good in ["a", "a.b", "a_b", "a__b", "a---b", "a/b/c", "0x/1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a.", ".a", "a..b", "a___b", "a/", "/a", "a/_b", "aB"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
