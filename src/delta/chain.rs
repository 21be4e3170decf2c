//! Layer identity. A layer's content is named by its diffID (sha256 of the
//! uncompressed tar); its place in an image by its chainID, which also
//! covers every layer below it:
//!
//! ```text
//! chain(0) = diff(0)
//! chain(i) = sha256(chain(i-1) + " " + diff(i))
//! ```
//!
//! So "the far side has this layer" means "it has this chainID", and what
//! must be sent is the suffix after the longest prefix the far side has.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// `docker save` (classic store) names each layer's directory by a legacy
/// "v1 ID": sha256 over the directory's `json` file with `id` removed and
/// `layer_id` (the chainID) and `parent` (as a digest) added, keys sorted,
/// values kept byte for byte. Given that `json`, find which layer of the
/// image it is, so the layer can be sent or skipped before its bytes arrive.
///
/// Below the top layer, Docker sets `os` only after computing the ID, so
/// both forms are tried. `None` means "not recognised": the caller then
/// identifies the layer by hashing its content instead.
pub fn identify_v1_dir(dir: &str, json: &[u8], chain: &[String]) -> Option<usize> {
    let mut fields: BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(json).ok()?;
    let id: String = serde_json::from_str(fields.remove("id")?.get()).ok()?;
    if id != dir {
        return None;
    }
    if let Some(p) = fields.remove("parent") {
        let parent: String = serde_json::from_str(p.get()).ok()?;
        let raw = serde_json::to_string(&format!("sha256:{parent}")).ok()?;
        fields.insert(
            "parent".into(),
            serde_json::value::RawValue::from_string(raw).ok()?,
        );
    }
    let without_os = {
        let mut f = fields.clone();
        f.remove("os").map(|_| f)
    };
    for variant in std::iter::once(fields).chain(without_os) {
        for (i, c) in chain.iter().enumerate() {
            let mut f = variant.clone();
            let raw = serde_json::to_string(c).ok()?;
            f.insert(
                "layer_id".into(),
                serde_json::value::RawValue::from_string(raw).ok()?,
            );
            let bytes = serde_json::to_vec(&f).ok()?;
            if hex::encode(Sha256::digest(&bytes)) == id {
                return Some(i);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Taken from a real `docker save` of a three-layer image (Docker 20.10).
    const DIFFS: [&str; 3] = [
        "sha256:89403a231ef9e4becc48d26baeb55dfb213701c32bd1484aa3ea05d261867120",
        "sha256:05e0e0fe9791c38ce2cca9eb7dd477cfce652d5ac65998be764239a82be3a309",
        "sha256:ff033d37a51c3529255e4c3c588c0d99486de1673a320b487432bfd2d1861d2a",
    ];
    const BASE_DIR: &str = "1a6af88b6a3fb2a4a532987af319a244233a874672eb0db81eb8a2c2a68fe3a1";
    const BASE_JSON: &str = r#"{"id":"1a6af88b6a3fb2a4a532987af319a244233a874672eb0db81eb8a2c2a68fe3a1","created":"1970-01-01T00:00:00Z","container_config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"os":"linux"}"#;
    const MID_DIR: &str = "700fc68a36b5cfeb7800cfade147cf2b6ac9fe9523862bfbce097015fdba8748";
    const MID_JSON: &str = r#"{"id":"700fc68a36b5cfeb7800cfade147cf2b6ac9fe9523862bfbce097015fdba8748","parent":"1a6af88b6a3fb2a4a532987af319a244233a874672eb0db81eb8a2c2a68fe3a1","created":"1970-01-01T00:00:00Z","container_config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"os":"linux"}"#;

    fn chain() -> Vec<String> {
        chain_ids(&DIFFS.map(String::from))
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let c = chain();
        assert_eq!(c[0], DIFFS[0]);
        assert_eq!(
            c[1],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{} {}", DIFFS[0], DIFFS[1])))
            )
        );
    }

    #[test]
    fn identifies_real_v1_directories() {
        assert_eq!(
            identify_v1_dir(BASE_DIR, BASE_JSON.as_bytes(), &chain()),
            Some(0)
        );
        assert_eq!(
            identify_v1_dir(MID_DIR, MID_JSON.as_bytes(), &chain()),
            Some(1)
        );
        // Wrong directory name, other chain, or junk: not recognised.
        assert_eq!(
            identify_v1_dir(MID_DIR, BASE_JSON.as_bytes(), &chain()),
            None
        );
        assert_eq!(
            identify_v1_dir(BASE_DIR, BASE_JSON.as_bytes(), &chain()[1..]),
            None
        );
        assert_eq!(identify_v1_dir(BASE_DIR, b"not json", &chain()), None);
    }
}
