//! The delta path, used when both ends are dos: learn what the far engine
//! has ([`crate::engine`]), stream only the missing layers out of the local
//! daemon's store or export (zstd on the wire), verify each on arrival and
//! load them in the form the far engine takes.
//!
//! - [`chain`]: diffIDs, chainIDs, and recognising layers in an export.
//! - [`adaptive`]: zstd at a level that follows the link.
//! - [`records`]: the framing inside the compressed stream.
//! - [`spool`]: the far side's resume spool.
//! - [`unpack`]: compressed layer blobs back to tars, checked as they come.
//! - [`store`]: layers read straight out of the local daemon's store.
//! - [`content`]: blobs read straight out of a containerd content store.
//! - [`shared`]: a fan-out's layers, read and compressed once for every host.
//! - [`send`] / [`receive`]: the two ends.

pub mod adaptive;
pub mod chain;
pub mod content;
pub mod proof;
pub mod receive;
pub mod records;
pub mod send;
pub mod shared;
pub mod spool;
pub mod store;
pub mod unpack;
