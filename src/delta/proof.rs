//! The pusher's proof that it holds an image the far side has already.
//!
//! A far side that holds the image offered could tag it at once; but then
//! a pusher naming any image ID the far daemon has (it may be allowed to
//! push `app:*`) would get that image tagged `app:…` without a byte of it
//! crossing. So the far side asks for the image's config, which hashes to
//! the config digest the plan names and lists the plan's layers, and tags
//! only once it has checked both. The pusher carries the config in its
//! plan where it has it at hand (read from the engine's store; see
//! [`plan`]), so the check costs no round trip; otherwise the far side asks
//! for it, and it travels as any delta does (a zstd stream of records) with
//! no layer after it ([`check`]).

use anyhow::{bail, Context, Result};
use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::zstd::DParameter;

use tokio::io::{AsyncRead, BufReader};

use super::adaptive::WINDOW_LOG;
use super::records::{self, Record};

/// Read the proof from `input`: the config record whose bytes hash to
/// `config` and name `diff_ids` as the image's layers, then the end.
pub async fn check<R: AsyncRead + Unpin>(
    input: R,
    config: &str,
    diff_ids: &[String],
) -> Result<()> {
    let params = [DParameter::window_log_max(WINDOW_LOG)];
    let mut dec = ZstdDecoder::with_params(BufReader::new(input), &params);
    let mut proven = false;
    loop {
        match records::read_header(&mut dec)
            .await
            .context("reading the pusher's proof")?
        {
            Record::Config { len } => {
                let c = records::read_config(&mut dec, len, config).await?;
                lists(&c, diff_ids)?;
                proven = true;
            }
            Record::Sizes { count } => {
                records::read_sizes(&mut dec, count).await?;
            }
            Record::End => break,
            Record::Layer { diff_id, .. }
            | Record::Resume { diff_id, .. }
            | Record::Blob { diff_id, .. } => {
                bail!("the pusher sent layer {diff_id} of an image the far side has")
            }
        }
    }
    if !proven {
        bail!("the pusher ended its proof without the image config");
    }
    Ok(())
}

/// The largest config a plan carries: the hello it rides in is bounded
/// ([`crate::protocol::handshake::MAX_HELLO`]); a larger one is asked for.
pub const MAX_IN_PLAN: usize = 24 * 1024;

/// The config to carry in a plan, if it fits.
pub fn for_plan(config: &[u8]) -> Option<String> {
    if config.len() > MAX_IN_PLAN {
        return None;
    }
    String::from_utf8(config.to_vec()).ok()
}

/// Does the config a plan carried prove the image: does it hash to
/// `config` and list `diff_ids`?
pub fn plan(carried: &str, config: &str, diff_ids: &[String]) -> Result<()> {
    let d = crate::engine::oci::sha256(carried.as_bytes());
    if d != config {
        bail!("the config in the pusher's plan hashes to {d}, not {config}");
    }
    lists(carried.as_bytes(), diff_ids)
}

fn lists(config: &[u8], diff_ids: &[String]) -> Result<()> {
    if layers_of(config).as_deref() != Some(diff_ids) {
        bail!("the config the pusher sent does not list the layers its plan names");
    }
    Ok(())
}

/// The diffIDs an image config lists (`rootfs.diff_ids`).
fn layers_of(config: &[u8]) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    serde_json::from_slice::<Config>(config)
        .ok()
        .map(|c| c.rootfs.diff_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    async fn stream(config: &[u8], layer: bool) -> Vec<u8> {
        let mut raw = Vec::new();
        records::write_config(&mut raw, config).await.unwrap();
        if layer {
            records::write_layer_header(&mut raw, D, 0).await.unwrap();
        }
        records::write_end(&mut raw).await.unwrap();
        zstd::bulk::compress(&raw, 3).unwrap()
    }

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[tokio::test]
    async fn a_config_that_hashes_to_the_id_and_lists_the_layers_proves_it() {
        let c = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#).into_bytes();
        let s = stream(&c, false).await;
        check(&s[..], &digest(&c), &[D.to_string()]).await.unwrap();
        // Another ID, other layers, a layer sent along: no proof.
        assert!(check(&s[..], D, &[D.to_string()]).await.is_err());
        assert!(check(&s[..], &digest(&c), &[]).await.is_err());
        let with_layer = stream(&c, true).await;
        assert!(check(&with_layer[..], &digest(&c), &[D.to_string()])
            .await
            .is_err());
        // Nothing at all.
        let mut raw = Vec::new();
        records::write_end(&mut raw).await.unwrap();
        let empty = zstd::bulk::compress(&raw, 3).unwrap();
        assert!(check(&empty[..], &digest(&c), &[D.to_string()])
            .await
            .is_err());
    }

    #[test]
    fn a_config_carried_in_the_plan_proves_it_the_same_way() {
        let c = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#);
        let d = digest(c.as_bytes());
        plan(&c, &d, &[D.to_string()]).unwrap();
        assert!(plan(&c, D, &[D.to_string()]).is_err());
        assert!(plan(&c, &d, &[]).is_err());
        assert!(plan(&format!("{c} "), &d, &[D.to_string()]).is_err());
        assert_eq!(for_plan(c.as_bytes()).as_deref(), Some(c.as_str()));
        assert_eq!(for_plan(&vec![b' '; MAX_IN_PLAN + 1]), None);
    }
}
