//! The delta path, used when both ends are dos and the far daemon uses the
//! classic image store: learn which layer chains the far daemon has, stream
//! only the missing layers out of the local daemon's store or export (zstd
//! on the wire), verify each on arrival and load them.
//!
//! - [`chain`]: diffIDs, chainIDs, and recognising layers in an export.
//! - [`inventory`]: what the far daemon has.
//! - [`adaptive`]: zstd at a level that follows the link.
//! - [`records`]: the framing inside the compressed stream.
//! - [`tarstream`]: streaming tar read/write.
//! - [`spool`]: the far side's resume spool.
//! - [`store`]: layers read straight out of the local daemon's store.
//! - [`send`] / [`receive`]: the two ends.

pub mod adaptive;
pub mod chain;
pub mod inventory;
pub mod receive;
pub mod records;
pub mod send;
pub mod spool;
pub mod store;
pub mod tarstream;
