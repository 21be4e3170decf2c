//! podman, through its Docker-compatible API. Images are named by their
//! config digest; its storage finds a layer by its uncompressed digest (the
//! diffID), so the OCI layout dos loads names each held layer as a plain
//! tar with that digest and the length the pusher reports. Podman 4.3
//! refuses a `docker save` archive that lacks layers, but loads this layout.
//!
//! Its Docker-compatible pull insists on TLS, even from 127.0.0.1 (Docker
//! exempts loopback registries; podman does not), so a pull through the
//! relay goes to its libpod API, which takes `tlsVerify=false`. Nothing
//! leaves the machine: the relay listens on its loopback.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::{Engine, Holding};

/// The libpod API version asked for (podman 4.0 and later serve it).
const LIBPOD: &str = "v4.0.0";

/// A pull's answer is JSON lines; one longer than this is not podman's.
const MAX_LINE: usize = 1 << 20;

pub(super) async fn holding(engine: &Engine, config: &str, diff_ids: &[String]) -> Result<Holding> {
    super::holding_by_config(engine, config, diff_ids, true).await
}

/// Pull `reference` (`name@digest`) from a plain-HTTP registry on this
/// machine's loopback, through the libpod API on DOCKER_HOST's unix socket.
pub(super) async fn pull(
    engine: &Engine,
    reference: &str,
    creds: &DockerCredentials,
) -> Result<()> {
    let host = &engine.daemon.host;
    let Some(path) = host.strip_prefix("unix://") else {
        bail!("pulling {reference} into podman: the relay needs podman's unix socket (DOCKER_HOST={host})");
    };
    let pulling = || format!("pulling {reference} into podman");
    let sock = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to podman at {host}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .with_context(pulling)?;
    let conn = tokio::spawn(conn);
    let auth = base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(creds)?);
    let req = hyper::Request::post(format!(
        "/{LIBPOD}/libpod/images/pull?reference={reference}&tlsVerify=false&quiet=true"
    ))
    .header("Host", "podman")
    .header("X-Registry-Auth", auth)
    .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.with_context(pulling)?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut line = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(pulling)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        line.extend_from_slice(data);
        if line.len() > MAX_LINE {
            bail!("{}: an answer line over {MAX_LINE} bytes", pulling());
        }
        while let Some(end) = line.iter().position(|&b| b == b'\n') {
            let one: Vec<u8> = line.drain(..=end).collect();
            error = error.or_else(|| pull_error(&one));
        }
    }
    error = error.or_else(|| pull_error(&line));
    conn.abort();
    match (status.is_success(), error) {
        (true, None) => Ok(()),
        (_, Some(e)) => Err(anyhow!(e)).with_context(pulling),
        (false, None) => bail!("{}: HTTP {status}", pulling()),
    }
}

/// The error in one line of a libpod pull's answer, if it is one.
fn pull_error(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let e = v.get("error").or_else(|| v.get("message"))?;
    e.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}
