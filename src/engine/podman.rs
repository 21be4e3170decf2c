//! podman, through its Docker-compatible API. Images are named by their
//! config digest; its storage finds a layer by its uncompressed digest (the
//! diffID), so the OCI layout dos loads names each held layer as a plain
//! tar with that digest and the length the pusher reports. Podman 4.3
//! refuses a `docker save` archive that lacks layers, but loads this layout.

use anyhow::Result;

use super::{Engine, Holding};

pub(super) async fn holding(engine: &Engine, config: &str, diff_ids: &[String]) -> Result<Holding> {
    if let Ok(i) = engine.daemon.api.inspect_image(config).await {
        let layers = i.root_fs.and_then(|r| r.layers).unwrap_or_default();
        if i.id.as_deref() == Some(config) && layers == diff_ids {
            return Ok(Holding {
                image: Some(config.to_string()),
                layers: diff_ids.len(),
                ..Holding::default()
            });
        }
    }
    let (layers, _) = engine.longest_prefix(diff_ids).await?;
    Ok(Holding {
        layers,
        needs_sizes: layers > 0,
        ..Holding::default()
    })
}
