//! The embedded OCI registry `dos push` starts when no service registry is
//! configured: [`path`] parses URLs, [`store`] keeps blobs by digest,
//! [`server`] speaks HTTP.

pub mod path;
pub mod server;
pub mod store;

pub use server::Registry;
