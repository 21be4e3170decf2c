//! Reading an image out of a registry over plain HTTP on loopback (the far
//! side's end of the relay): its manifest by digest, and blobs as streams.
//! Everything read is checked against the digest it was asked by.

use std::io;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use crate::auth::Credentials;

/// Manifests are small; this bounds what the relay can make us buffer.
const MAX_MANIFEST: usize = 4 << 20;

/// What a manifest request accepts: the single-image manifests dos reads.
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

pub struct Client {
    /// e.g. `http://127.0.0.1:41234/v2/team/app`
    repo: String,
    auth: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(addr: &str, repository: &str, creds: &Credentials) -> Client {
        Client {
            repo: format!("http://{addr}/v2/{repository}"),
            auth: creds.basic_header(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    async fn get(
        &self,
        what: &str,
        digest: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .get(format!("{}/{what}/{digest}", self.repo))
            .header("Authorization", &self.auth);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("fetching {digest} from the relay"))?;
        if !resp.status().is_success() {
            bail!("fetching {digest} from the relay: HTTP {}", resp.status());
        }
        Ok(resp)
    }

    /// The manifest `digest`, its bytes checked.
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>> {
        let mut resp = self.get("manifests", digest, Some(ACCEPT)).await?;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .context("reading a manifest from the relay")?
        {
            if body.len() + chunk.len() > MAX_MANIFEST {
                bail!("the relay's manifest {digest} is over {MAX_MANIFEST} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if got != digest {
            bail!("the relay's manifest {digest} hashes to {got}");
        }
        Ok(body)
    }

    /// The blob `digest` of `size` bytes, as it streams. The stream ends in
    /// an error if the blob is not those bytes.
    pub async fn blob(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        let resp = self.get("blobs", digest, None).await?;
        let want = digest.to_string();
        let mut hasher = Some(Sha256::new());
        let mut seen = 0u64;
        let body = resp
            .bytes_stream()
            .map(Some)
            .chain(futures_util::stream::once(async { None }));
        Ok(body.filter_map(move |item| {
            let out = match item {
                Some(Ok(b)) => {
                    seen += b.len() as u64;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&b);
                    }
                    (seen <= size).then_some(Ok(b)).or_else(|| {
                        Some(Err(io::Error::other(format!(
                            "the relay's blob {want} is over {size} bytes"
                        ))))
                    })
                }
                Some(Err(e)) => Some(Err(io::Error::other(format!(
                    "reading {want} from the relay: {e}"
                )))),
                None => {
                    let got = hasher
                        .take()
                        .map(|h| format!("sha256:{}", hex::encode(h.finalize())));
                    (seen != size || got.as_deref() != Some(want.as_str())).then(|| {
                        Err(io::Error::other(format!(
                            "the relay's blob {want}: {seen} of {size} bytes, hashing to {got:?}"
                        )))
                    })
                }
            };
            std::future::ready(out)
        }))
    }
}
