//! Content-addressed storage for the embedded registry.
//!
//! Blobs (layers, configs and manifests alike) live in a temp dir as
//! `blobs/<hex>`, named by the sha256 of their bytes, which is checked as they
//! arrive. Which repository may see which blob, manifest and tag is kept in
//! memory: the registry lives as long as one `dos push`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::path::Digest;

#[derive(Default)]
struct Repo {
    blobs: HashSet<Digest>,
    manifests: HashMap<Digest, String>,
    tags: BTreeMap<String, Digest>,
}

/// An upload in progress. While a request appends to it, it is taken out of
/// the map, so two requests can't interleave bytes.
pub struct Upload {
    pub name: String,
    pub size: u64,
    hasher: Sha256,
    file: tokio::fs::File,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    uploads: HashMap<String, Option<Upload>>,
}

pub struct Store {
    dir: tempfile::TempDir,
    state: Mutex<State>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    Unknown,
    Busy,
}

impl Store {
    pub fn new() -> Result<Store> {
        let dir = tempfile::Builder::new()
            .prefix("dos-registry-")
            .tempdir()
            .context("creating the registry's temp dir")?;
        std::fs::create_dir(dir.path().join("blobs"))?;
        std::fs::create_dir(dir.path().join("uploads"))?;
        Ok(Store {
            dir,
            state: Mutex::new(State::default()),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.path().join("blobs").join(d.hex())
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("uploads").join(id)
    }

    pub fn has_blob(&self, name: &str, d: &Digest) -> bool {
        let st = self.state.lock().unwrap();
        st.repos.get(name).is_some_and(|r| r.blobs.contains(d))
    }

    /// Cross-repository mount: link `d` into `name` if `from` has it.
    pub fn mount(&self, name: &str, from: &str, d: &Digest) -> bool {
        let mut st = self.state.lock().unwrap();
        if !st.repos.get(from).is_some_and(|r| r.blobs.contains(d)) {
            return false;
        }
        st.repos
            .entry(name.into())
            .or_default()
            .blobs
            .insert(d.clone());
        true
    }

    pub async fn start_upload(&self, name: &str) -> Result<String> {
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let file = tokio::fs::File::create(self.upload_path(&id))
            .await
            .context("creating an upload file")?;
        self.state.lock().unwrap().uploads.insert(
            id.clone(),
            Some(Upload {
                name: name.into(),
                size: 0,
                hasher: Sha256::new(),
                file,
            }),
        );
        Ok(id)
    }

    /// Take an upload for exclusive use by one request.
    pub fn take_upload(&self, name: &str, id: &str) -> Result<Upload, UploadError> {
        let mut st = self.state.lock().unwrap();
        match st.uploads.get_mut(id) {
            None => Err(UploadError::Unknown),
            Some(slot) => match slot {
                Some(u) if u.name != name => Err(UploadError::Unknown),
                None => Err(UploadError::Busy),
                Some(_) => Ok(slot.take().unwrap()),
            },
        }
    }

    pub fn upload_size(&self, name: &str, id: &str) -> Result<u64, UploadError> {
        let st = self.state.lock().unwrap();
        match st.uploads.get(id) {
            Some(Some(u)) if u.name == name => Ok(u.size),
            Some(None) => Err(UploadError::Busy),
            _ => Err(UploadError::Unknown),
        }
    }

    pub fn put_back(&self, id: &str, u: Upload) {
        if let Some(slot) = self.state.lock().unwrap().uploads.get_mut(id) {
            *slot = Some(u);
        }
    }

    pub fn cancel_upload(&self, id: &str) {
        self.state.lock().unwrap().uploads.remove(id);
        let _ = std::fs::remove_file(self.upload_path(id));
    }

    /// Finish an upload: the bytes must hash to `expected`.
    pub async fn commit_upload(&self, id: &str, mut u: Upload, expected: &Digest) -> Result<bool> {
        u.file.flush().await?;
        u.file.sync_data().await.ok();
        let got = Digest::from_sha256(&u.hasher.clone().finalize());
        if &got != expected {
            self.cancel_upload(id);
            return Ok(false);
        }
        let dst = self.blob_path(expected);
        if dst.exists() {
            tokio::fs::remove_file(self.upload_path(id)).await.ok();
        } else {
            tokio::fs::rename(self.upload_path(id), &dst)
                .await
                .context("moving an upload into place")?;
        }
        let mut st = self.state.lock().unwrap();
        st.uploads.remove(id);
        st.repos
            .entry(u.name)
            .or_default()
            .blobs
            .insert(expected.clone());
        Ok(true)
    }

    /// Store a manifest (already verified by the caller) under `name`.
    pub async fn put_manifest(
        &self,
        name: &str,
        digest: &Digest,
        media_type: &str,
        body: &[u8],
        tag: Option<&str>,
    ) -> Result<()> {
        let dst = self.blob_path(digest);
        if !dst.exists() {
            let tmp = self.upload_path(&format!("m-{}", digest.hex()));
            tokio::fs::write(&tmp, body).await?;
            tokio::fs::rename(&tmp, &dst).await?;
        }
        let mut st = self.state.lock().unwrap();
        let repo = st.repos.entry(name.into()).or_default();
        repo.manifests.insert(digest.clone(), media_type.into());
        if let Some(t) = tag {
            repo.tags.insert(t.into(), digest.clone());
        }
        Ok(())
    }

    pub fn has_manifest(&self, name: &str, d: &Digest) -> bool {
        let st = self.state.lock().unwrap();
        st.repos
            .get(name)
            .is_some_and(|r| r.manifests.contains_key(d))
    }

    /// Resolve a tag or digest to (digest, media type).
    pub fn resolve(
        &self,
        name: &str,
        reference: &super::path::Reference,
    ) -> Option<(Digest, String)> {
        let st = self.state.lock().unwrap();
        let repo = st.repos.get(name)?;
        let d = match reference {
            super::path::Reference::Tag(t) => repo.tags.get(t)?.clone(),
            super::path::Reference::Digest(d) => d.clone(),
        };
        let mt = repo.manifests.get(&d)?.clone();
        Some((d, mt))
    }

    pub fn delete_manifest(&self, name: &str, reference: &super::path::Reference) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(repo) = st.repos.get_mut(name) else {
            return false;
        };
        match reference {
            super::path::Reference::Tag(t) => repo.tags.remove(t).is_some(),
            super::path::Reference::Digest(d) => {
                repo.tags.retain(|_, v| v != d);
                repo.manifests.remove(d).is_some()
            }
        }
    }

    pub fn tags(&self, name: &str) -> Option<Vec<String>> {
        let st = self.state.lock().unwrap();
        st.repos.get(name).map(|r| r.tags.keys().cloned().collect())
    }
}

impl Upload {
    /// Append bytes, hashing them as they go.
    pub async fn append(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk).await?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }
}
