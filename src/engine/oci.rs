//! The OCI pieces a far engine that loads image layouts needs: blob
//! descriptors, the image manifest dos writes, and the layout's index.
//!
//! The manifest is written in the form Docker's containerd image store
//! gives an image it loaded from `docker save` (Docker media types, fields
//! in this order, no whitespace). So a partial load produces the same
//! manifest, and so the same image ID there, as loading the whole image.
//! Layers the far store already holds keep the descriptors it holds them
//! under, whatever their media type.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Compression;

pub const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_LIST_DOCKER: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const CONFIG_DOCKER: &str = "application/vnd.docker.container.image.v1+json";
/// An uncompressed layer: its blob digest is its diffID.
pub const LAYER_TAR_DOCKER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// A gzip layer, Docker's name for it.
pub const LAYER_GZIP_DOCKER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const LAYER_TAR_OCI: &str = "application/vnd.oci.image.layer.v1.tar";

/// Bounds on what a peer's or a daemon's manifest may hold.
pub const MAX_MANIFEST: usize = 4 << 20;
pub const MAX_LAYERS: usize = 1024;

/// A blob as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    /// An uncompressed layer of `size` bytes.
    pub fn layer_tar(diff_id: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: LAYER_TAR_DOCKER.into(),
            digest: diff_id.into(),
            size,
        }
    }

    /// This layer as a Docker v2 manifest names it. An OCI media type in a
    /// Docker manifest is refused by podman; zstd has no Docker name and
    /// keeps its OCI one.
    pub fn in_docker_manifest(mut self) -> Descriptor {
        if self.media_type == LAYER_TAR_OCI {
            self.media_type = LAYER_TAR_DOCKER.into();
        } else if Compression::of(&self.media_type) == Some(Compression::Gzip) {
            self.media_type = LAYER_GZIP_DOCKER.into();
        }
        self
    }
}

/// An image manifest (Docker v2 schema 2 or OCI; the same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// The manifest for `config` over `layers`.
    pub fn new(config: &[u8], layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_DOCKER.into(),
            config: Descriptor {
                media_type: CONFIG_DOCKER.into(),
                digest: sha256(config),
                size: config.len() as u64,
            },
            layers,
        }
    }

    /// Parse a manifest from a daemon or a peer; None for anything else
    /// (an index, junk, an absurd layer count).
    pub fn parse(body: &[u8]) -> Option<Manifest> {
        if body.len() > MAX_MANIFEST {
            return None;
        }
        let m: Manifest = serde_json::from_slice(body).ok()?;
        let known = m.media_type.is_empty()
            || m.media_type == MANIFEST_DOCKER
            || m.media_type == MANIFEST_OCI;
        (m.schema_version == 2 && known && m.layers.len() <= MAX_LAYERS).then_some(m)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }
}

/// `index.json` of a layout holding one manifest.
pub fn index(manifest: &[u8], media_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_OCI,
        "manifests": [{
            "mediaType": media_type,
            "digest": sha256(manifest),
            "size": manifest.len(),
        }],
    }))
    .expect("an index always serializes")
}

pub const LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what Docker 28's containerd store reports for an image
    /// loaded from a one-layer `docker save` (seen through a push).
    #[test]
    fn the_manifest_matches_what_a_full_load_gives() {
        let config = vec![b'x'; 917];
        let m = Manifest::new(
            &config,
            vec![Descriptor::layer_tar(
                "sha256:5824ce0f8666cc7a379826fdb9bc9f3737620bdd15ee0b2f6f6b9cfa848bf8a8",
                1996800,
            )],
        );
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":917}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"sha256:5824ce0f8666cc7a379826fdb9bc9f3737620bdd15ee0b2f6f6b9cfa848bf8a8","size":1996800}}]}}"#,
            sha256(&config)
        );
        assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), want);
        assert_eq!(Manifest::parse(want.as_bytes()), Some(m));
    }

    #[test]
    fn indexes_and_junk_are_not_manifests() {
        let idx = index(b"{}", MANIFEST_OCI);
        assert!(Manifest::parse(&idx).is_none());
        assert!(Manifest::parse(b"not json").is_none());
        let many = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": CONFIG_DOCKER, "digest": sha256(b""), "size": 0},
            "layers": vec![serde_json::json!({"mediaType": LAYER_TAR_DOCKER, "digest": sha256(b""), "size": 0}); MAX_LAYERS + 1],
        });
        assert!(Manifest::parse(&serde_json::to_vec(&many).unwrap()).is_none());
    }
}
