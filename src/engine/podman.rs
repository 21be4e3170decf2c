//! podman, through its Docker-compatible API. Images are named by their
//! config digest; its storage finds a layer by its uncompressed digest (the
//! diffID), so the OCI layout dos loads names each held layer as a plain
//! tar with that digest and the length the pusher reports. Podman 4.3
//! refuses a `docker save` archive that lacks layers, but loads this layout.

use anyhow::Result;

use super::{Engine, Holding};

pub(super) async fn holding(engine: &Engine, config: &str, diff_ids: &[String]) -> Result<Holding> {
    super::holding_by_config(engine, config, diff_ids, true).await
}
