//! Docker's classic image store (graph drivers such as overlay2): images
//! are named by their config digest, layers are held by chainID, and
//! `docker load` takes an archive without the layers whose chain it has.
//! How the pushing side reads its layers lives in [`crate::delta::store`]
//! and [`crate::capture`].

use anyhow::Result;

use super::{Engine, Holding};

pub(super) async fn holding(engine: &Engine, config: &str, diff_ids: &[String]) -> Result<Holding> {
    super::holding_by_config(engine, config, diff_ids, false).await
}
