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

/// The files after the layers of a `docker save` archive of the image
/// with `config` (whose digest is `id`) over `diff_ids`.
pub(super) fn docker_archive(id: &str, diff_ids: &[String], config: Vec<u8>) -> Result<Files> {
    let config_name = format!("{}.json", id.trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": null,
        "Layers": diff_ids.iter()
            .map(|d| format!("{}/layer.tar", d.trim_start_matches("sha256:")))
            .collect::<Vec<_>>(),
    }]))?;
    Ok(vec![
        (config_name, config),
        ("manifest.json".into(), manifest),
    ])
}

/// The descriptor the far engine will hold layer `i` under, once it is
/// loaded: the one it holds a held layer under, the source's blob's, or
/// a plain tar's of the length received or told. None while a held
/// layer's length is not told yet.
pub(super) fn descriptor(
    plan: &ReceivePlan,
    i: usize,
    lens: &HashMap<String, u64>,
    as_blobs: &HashMap<String, usize>,
) -> Option<Descriptor> {
    let d = &plan.diff_ids[i];
    let held = plan.blobs.get(i).filter(|_| i < plan.have).cloned();
    let blob = || {
        as_blobs
            .get(d)
            .and_then(|&j| plan.source.as_ref()?.blob(j))
            .cloned()
    };
    held.or_else(blob)
        .or_else(|| lens.get(d).map(|&len| Descriptor::layer_tar(d, len)))
}

/// The files after the layers of an OCI layout of the image with `config`
/// over the first `upto` layers, and its manifest's digest. The manifest
/// is the source's own where the engine names images by their manifest,
/// the image is the whole one (`whole`) and every layer is under the
/// descriptor the source's manifest gives it; else dos writes one (the
/// form a full `docker load` gives, see [`oci`]).
pub(super) fn oci_layout(
    plan: &ReceivePlan,
    (upto, whole): (usize, bool),
    config: Vec<u8>,
    lens: &HashMap<String, u64>,
    as_blobs: &HashMap<String, usize>,
) -> Result<(Files, String)> {
    let src = plan.source.as_ref();
    let mut layers = Vec::with_capacity(upto);
    for (i, d) in plan.diff_ids[..upto].iter().enumerate() {
        let Some(desc) = descriptor(plan, i, lens, as_blobs) else {
            bail!("the pusher did not say how long held layer {d} is");
        };
        layers.push(desc);
    }
    let theirs = src.filter(|s| {
        whole
            && plan.keep_manifest
            && s.parsed.layers.len() == layers.len()
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
