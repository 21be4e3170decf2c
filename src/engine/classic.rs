//! Docker's classic image store (graph drivers such as overlay2): images
//! are named by their config digest, layers are held by chainID, and
//! `docker load` takes an archive without the layers whose chain it has.
//! How the pushing side reads its layers lives in [`crate::delta::store`]
//! and [`crate::capture`].

use anyhow::Result;

use super::{Engine, Holding};

pub(super) async fn holding(engine: &Engine, config: &str, diff_ids: &[String]) -> Result<Holding> {
    // The image itself may be here already (under another name, or from an
    // earlier transfer): then nothing needs to move.
    if engine.daemon.api.inspect_image(config).await.is_ok() {
        return Ok(Holding {
            image: Some(config.to_string()),
            layers: diff_ids.len(),
            ..Holding::default()
        });
    }
    let (layers, _) = engine.longest_prefix(diff_ids).await?;
    Ok(Holding {
        layers,
        ..Holding::default()
    })
}
