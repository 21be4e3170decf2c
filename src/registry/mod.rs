//! The embedded OCI registry `dos push` starts when no service registry is
//! configured: [`path`] parses URLs, [`store`] keeps blobs by digest,
//! [`server`] speaks HTTP. [`client`] reads an image back out of one (the
//! far side, through the relay).

pub mod client;
pub mod path;
pub mod server;
pub mod store;

pub use server::Registry;
