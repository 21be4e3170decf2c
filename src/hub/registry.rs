//! What a hub asks of the registry on its loopback itself: which manifest a
//! tag names, and the image's config (to report its config digest and
//! layers). Everything else is the clients' engines talking through the
//! gate.

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::engine::oci::{self, Manifest, MAX_MANIFEST};

/// The largest image config read (Docker's are a few kB).
const MAX_CONFIG: usize = 1 << 20;

/// An image as the registry holds it.
pub struct Held {
    /// The manifest's digest.
    pub manifest: String,
    /// Its config's digest, and the layers the config names.
    pub config: String,
    pub diff_ids: Vec<String>,
}

/// The registry at `addr` (host:port on loopback).
pub struct Registry {
    base: String,
    http: reqwest::Client,
}

impl Registry {
    pub fn new(addr: &str) -> Registry {
        Registry {
            base: format!("http://{addr}/v2"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    pub fn base(&self) -> String {
        self.base.trim_end_matches("/v2").to_string()
    }

    /// The image `repository:reference` (a tag or a digest), or None if
    /// the registry has no such manifest.
    pub async fn resolve(&self, repository: &str, reference: &str) -> Result<Option<Held>> {
        let accept = [
            oci::MANIFEST_DOCKER,
            oci::MANIFEST_OCI,
            oci::INDEX_OCI,
            oci::MANIFEST_LIST_DOCKER,
        ]
        .join(", ");
        let url = format!("{}/{repository}/manifests/{reference}", self.base);
        let resp = self
            .http
            .get(&url)
            .header("Accept", accept)
            .send()
            .await
            .with_context(|| {
                format!(
                    "asking the registry at {} for {repository}:{reference}",
                    self.base()
                )
            })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!(
                "the registry answered {} for {repository}:{reference}",
                resp.status()
            );
        }
        let body = limited(resp, MAX_MANIFEST).await?;
        let manifest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        let Some(m) = Manifest::parse(&body) else {
            bail!("{repository}:{reference} in the hub's registry is not a single-platform image manifest (an index is not handed out)");
        };
        let url = format!("{}/{repository}/blobs/{}", self.base, m.config.digest);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .context("reading the image config")?;
        if !resp.status().is_success() {
            bail!(
                "the registry answered {} for the config {}",
                resp.status(),
                m.config.digest
            );
        }
        let config = limited(resp, MAX_CONFIG).await?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        if got != m.config.digest {
            bail!("the registry's config {} hashes to {got}", m.config.digest);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&config).context("reading the image config")?;
        let diff_ids = v["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Held {
            manifest,
            config: m.config.digest,
            diff_ids,
        }))
    }
}

/// A body of at most `max` bytes.
async fn limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("reading from the registry")? {
        if body.len() + chunk.len() > max {
            bail!("the registry's answer is over {max} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
