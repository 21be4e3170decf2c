//! The archive a far engine loads: a `docker save` archive, or an OCI
//! layout naming held layers by the descriptors the engine holds.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::engine::oci::{self, Descriptor, Manifest};
use crate::engine::{Compression, Layout};

use super::ReceivePlan;

/// Files of an archive: name and contents.
pub(super) type Files = Vec<(String, Vec<u8>)>;

/// Where layer `diff_id`, arriving as `name` (its diffID, or its blob's
/// digest), goes in the archive. The classic store's load unpacks a
/// compressed layer file itself, so a blob goes where its tar would.
pub(super) fn layer_entry(layout: Layout, diff_id: &str, name: &str) -> String {
    match layout {
        Layout::DockerArchive => format!("{}/layer.tar", diff_id.trim_start_matches("sha256:")),
        Layout::Oci => format!("blobs/sha256/{}", name.trim_start_matches("sha256:")),
    }
}

/// Layer `diff_id` may arrive as blob `blob` of `len` bytes: the source's
/// manifest names it so for a layer still missing. Returns that layer's
/// index and the blob's compression.
pub(super) fn named_blob(
    plan: &ReceivePlan,
    diff_id: &str,
    blob: &str,
    len: u64,
) -> Option<(usize, Compression)> {
    let src = plan.source.as_ref()?;
    (plan.have..plan.diff_ids.len()).find_map(|i| {
        let b = src.blob(i)?;
        (plan.diff_ids[i] == diff_id && b.digest == blob && b.size == len)
            .then(|| Compression::of(&b.media_type))
            .flatten()
            .map(|c| (i, c))
    })
}

/// The files after the layers of a `docker save` archive.
pub(super) fn docker_archive(plan: &ReceivePlan, config: Vec<u8>) -> Result<Files> {
    let hex = plan.image_id.trim_start_matches("sha256:");
    let config_name = format!("{hex}.json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": null,
        "Layers": plan.diff_ids.iter()
            .map(|d| format!("{}/layer.tar", d.trim_start_matches("sha256:")))
            .collect::<Vec<_>>(),
    }]))?;
    Ok(vec![
        (config_name, config),
        ("manifest.json".into(), manifest),
    ])
}

/// The files after the layers of an OCI layout, and its manifest's digest.
/// The manifest is the source's own where the engine names images by
/// their manifest and every layer is under the descriptor the source's
/// manifest gives it; else dos writes one (the form a full `docker load`
/// gives, see [`oci`]).
pub(super) fn oci_layout(
    plan: &ReceivePlan,
    config: Vec<u8>,
    lens: &HashMap<String, u64>,
    as_blobs: &HashMap<String, usize>,
) -> Result<(Files, String)> {
    let src = plan.source.as_ref();
    let mut layers = Vec::with_capacity(plan.diff_ids.len());
    for (i, d) in plan.diff_ids.iter().enumerate() {
        let held = plan.blobs.get(i).filter(|_| i < plan.have).cloned();
        let blob = as_blobs.get(d).and_then(|&j| src?.blob(j)).cloned();
        let desc = match (held, blob, lens.get(d)) {
            (Some(b), _, _) => b,
            (None, Some(b), _) => b,
            (None, None, Some(&len)) => Descriptor::layer_tar(d, len),
            (None, None, None) => bail!("the pusher did not say how long held layer {d} is"),
        };
        layers.push(desc);
    }
    let theirs = src.filter(|s| {
        plan.keep_manifest
            && s.parsed.config.size == config.len() as u64
            && s.parsed
                .layers
                .iter()
                .zip(&layers)
                .all(|(a, b)| a.digest == b.digest)
    });
    let (body, media_type) = match theirs {
        Some(s) => (s.body.clone(), s.parsed.media_type.clone()),
        None => {
            let m = Manifest::new(
                &config,
                layers
                    .into_iter()
                    .map(Descriptor::in_docker_manifest)
                    .collect(),
            );
            (m.to_bytes(), m.media_type)
        }
    };
    let media_type = if media_type.is_empty() {
        oci::MANIFEST_OCI.to_string()
    } else {
        media_type
    };
    let digest = oci::sha256(&body);
    let index = oci::index(&body, &media_type);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    Ok((
        vec![
            (blob(&oci::sha256(&config)), config),
            (blob(&digest), body),
            ("index.json".into(), index),
            ("oci-layout".into(), oci::LAYOUT_FILE.to_vec()),
        ],
        digest,
    ))
}
