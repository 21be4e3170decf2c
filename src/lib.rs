//! dos: move Docker images between machines over any byte stream.
//!
//! Module map, from the wire up:
//! - [`protocol`]: the handshake, frames and control messages.
//! - [`mux`]: many flow-controlled streams over one byte stream.
//! - [`transport`]: the user's command (ssh …) whose stdio carries the protocol.
//! - [`registry`]: the embedded OCI registry (paths, storage, HTTP).
//! - [`gate`]: what a relay stream may ask of the registry, checked on the pushing side.
//! - [`relay`]: the far side's end of the relay: the daemon's pull, its blobs kept in the resume spool.
//! - [`upstream`]: forwarding to the registry on 127.0.0.1 (for the gate and the tunnel).
//! - [`delta`]: the default path between two dos: what the far daemon has,
//!   the missing layers (read out of the local daemon's store or export) as
//!   verified records in an adaptive zstd stream, the far side's load and
//!   resume spool.
//! - [`capture`]: reading only the new layers out of the local daemon (a push into a capture registry).
//! - [`engine`]: what dos needs of a container engine (Docker's classic
//!   store, Docker's containerd image store, podman), behind one interface.
//! - [`docker`]: the Docker daemon API (bollard), connected like the docker CLI.
//! - [`push`] / [`pull`]: the two commands; [`fetch`] / [`send`]: the same
//!   session the other way (the receiver starts the sender).
//! - [`host`], [`bootstrap`]: `--to HOST` over the user's ssh, and dos copying itself to a host without it.
//! - [`hub`]: `dos hub`, the forced command in front of a registry on a host's loopback.
//! - [`fanout`]: one push to several hosts, each layer read and compressed once.
//! - [`plugin`]: dos as the Docker CLI plugin `docker dos`.
//! - [`settings`]: every setting read from the environment, in one place.
//! - [`setup`]: where a push runs (CI variables, DOCKER_HOST) and the push plan.
//! - [`tunnel`]: exposing the registry to a daemon that can't reach our loopback (ngrok).
//! - [`allow`]: the allow-list and ssh forced-command checks of a locked-down pull.
//! - [`leftovers`]: temporary names an interrupted run must still remove.
//! - [`mod@reference`], [`auth`], [`http`], [`progress`], [`signal`], [`stdio`], [`tarstream`], [`error`]: support.
//! - [`cli`]: the command-line definition.
//!
//! Nothing in this library prints to stdout: on the far side stdout is the
//! protocol. Logs and progress go to stderr.

pub mod allow;
pub mod auth;
pub mod bootstrap;
pub mod capture;
pub mod cli;
pub mod delta;
pub mod docker;
pub mod engine;
pub mod error;
pub mod fanout;
pub mod fetch;
pub mod gate;
pub mod host;
pub mod http;
pub mod hub;
pub mod leftovers;
pub mod mux;
pub mod plugin;
pub mod progress;
pub mod protocol;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod relay;
pub mod send;
pub mod settings;
pub mod setup;
pub mod signal;
pub mod stdio;
pub mod tarstream;
pub mod transport;
pub mod tunnel;
pub mod upstream;
