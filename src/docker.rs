//! The Docker daemon, through its API (bollard): connecting the way the
//! docker CLI does (DOCKER_HOST with unix://, tcp://, and the TLS variables),
//! and the few image operations dos needs, with errors that name the daemon.

use anyhow::{Context, Result};
use bollard::auth::DockerCredentials;
use bollard::models::ImageInspect;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, PushImageOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use thiserror::Error;

/// Requests may stream for a long time (a large layer over a slow link);
/// the transfer has its own liveness checks, so the API timeout is generous.
const API_TIMEOUT_SECS: u64 = 24 * 3600;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot reach the Docker daemon at DOCKER_HOST={host}: {cause}")]
    Unreachable { host: String, cause: String },
    #[error("image {image} not found on the Docker daemon at DOCKER_HOST={host}")]
    ImageNotFound { image: String, host: String },
}

/// A connected daemon and where it is.
#[derive(Clone)]
pub struct Daemon {
    pub api: Docker,
    pub host: String,
}

/// DOCKER_HOST, or the default socket.
pub fn docker_host() -> String {
    crate::settings::docker_host()
}

impl Daemon {
    /// Connect and check the daemon answers (negotiating the API version, so
    /// older engines such as 20.10 work).
    pub async fn connect() -> Result<Daemon> {
        Daemon::connect_to(&docker_host()).await
    }

    /// Connect to the daemon at `host` (a DOCKER_HOST value).
    pub async fn connect_to(host: &str) -> Result<Daemon> {
        let host = host.to_string();
        let unreachable = |cause: String| DaemonError::Unreachable {
            host: host.clone(),
            cause,
        };
        let api = if host.starts_with("unix://") {
            Docker::connect_with_unix(&host, API_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") || host.starts_with("https://") {
            if tls_wanted(&host) {
                let dir = cert_dir().map_err(|e| unreachable(e.to_string()))?;
                Docker::connect_with_ssl(
                    &host,
                    &dir.join("key.pem"),
                    &dir.join("cert.pem"),
                    &dir.join("ca.pem"),
                    API_TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
            } else {
                Docker::connect_with_http(&host, API_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
        } else {
            return Err(unreachable(
                "unsupported scheme (dos speaks unix://, tcp:// and https://; for ssh:// use dos's own transport)".into(),
            )
            .into());
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let api = api
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Daemon { api, host })
    }

    /// Inspect an image, turning 404 into [`DaemonError::ImageNotFound`].
    pub async fn inspect(&self, image: &str) -> Result<ImageInspect> {
        match self.api.inspect_image(image).await {
            Ok(i) => Ok(i),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DaemonError::ImageNotFound {
                image: image.to_string(),
                host: self.host.clone(),
            }
            .into()),
            Err(e) => Err(e).with_context(|| format!("inspecting image {image}")),
        }
    }

    pub async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.api
            .tag_image(image, Some(opts))
            .await
            .with_context(|| format!("tagging {image} as {repo}:{tag}"))
    }

    /// Remove one name (tag or digest reference), never the layers it shares.
    /// A name already gone is fine.
    pub async fn untag(&self, name: &str) -> Result<()> {
        let opts = RemoveImageOptionsBuilder::default().noprune(true).build();
        match self.api.remove_image(name, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the temporary name {name}")),
        }
    }

    /// Remove the image `id`, one dos made. One already gone is fine.
    pub async fn remove_image(&self, id: &str) -> Result<()> {
        let opts = RemoveImageOptionsBuilder::default().force(true).build();
        match self.api.remove_image(id, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing image {id}")),
        }
    }

    /// Remove every tag and digest reference under `repo_prefix` (e.g.
    /// `127.0.0.1:41234/`, a registry this process started): the traces a
    /// registry round trip leaves. Found by listing, not by inspecting the
    /// image: an image a pull left incomplete may not inspect.
    pub async fn untag_all_under(&self, repo_prefix: &str) -> Result<()> {
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::default()
            .all(true)
            .build();
        let images =
            self.api.list_images(Some(opts)).await.with_context(|| {
                format!("listing images to remove the names under {repo_prefix}")
            })?;
        let names: std::collections::BTreeSet<String> = images
            .into_iter()
            .flat_map(|i| i.repo_tags.into_iter().chain(i.repo_digests))
            .filter(|n| n.starts_with(repo_prefix))
            .collect();
        for n in names {
            self.untag(&n).await?;
        }
        Ok(())
    }

    /// `docker load` of the archive `body` streams.
    pub async fn load<S>(&self, body: S) -> Result<()>
    where
        S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut s = self.api.import_image_stream(opts, body, None);
        while let Some(item) = s.next().await {
            let info = item
                .map_err(|e| match e {
                    bollard::errors::Error::DockerStreamError { error } => anyhow::anyhow!(error),
                    other => anyhow::anyhow!(other),
                })
                .context("docker load failed")?;
            if let Some(line) = info
                .stream
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                tracing::debug!("docker load: {line}");
            }
        }
        Ok(())
    }

    /// `docker push NAME:TAG` with credentials in X-Registry-Auth.
    pub async fn push(&self, name: &str, tag: &str, creds: DockerCredentials) -> Result<()> {
        let opts = PushImageOptionsBuilder::default().tag(tag).build();
        let mut s = self.api.push_image(name, Some(opts), Some(creds));
        while let Some(item) = s.next().await {
            let info = item.with_context(|| format!("pushing {name}:{tag}"))?;
            if let Some(status) = &info.status {
                tracing::trace!("push: {status}");
            }
        }
        Ok(())
    }

    /// `docker pull NAME:TAG` with credentials in X-Registry-Auth.
    pub async fn pull(&self, name: &str, tag: &str, creds: DockerCredentials) -> Result<()> {
        let opts = CreateImageOptionsBuilder::default()
            .from_image(name)
            .tag(tag)
            .build();
        let mut s = self.api.create_image(Some(opts), None, Some(creds));
        while let Some(item) = s.next().await {
            let info = item
                .map_err(|e| match e {
                    bollard::errors::Error::DockerStreamError { error } => anyhow::anyhow!(error),
                    bollard::errors::Error::DockerResponseServerError { message, .. } => {
                        anyhow::anyhow!(message)
                    }
                    other => anyhow::anyhow!(other),
                })
                .map_err(|e| hint_unreachable_relay(e, name))
                .with_context(|| format!("docker pull {} failed", join_ref(name, tag)))?;
            if let (Some(status), Some(id)) = (&info.status, &info.id) {
                if status == "Pull complete" || status == "Already exists" {
                    tracing::debug!("{id}: {status}");
                }
            }
        }
        Ok(())
    }
}

/// `repo:tag` or `repo@sha256:…`.
pub fn join_ref(repo: &str, tag_or_digest: &str) -> String {
    if tag_or_digest.contains(':') {
        format!("{repo}@{tag_or_digest}")
    } else {
        format!("{repo}:{tag_or_digest}")
    }
}

/// A daemon that can't connect to a 127.0.0.1 relay is not on this machine's
/// loopback: say so, since the raw message doesn't.
fn hint_unreachable_relay(e: anyhow::Error, name: &str) -> anyhow::Error {
    let msg = e.to_string();
    if name.starts_with("127.0.0.1:") && msg.contains("connection refused") {
        e.context(format!(
            "the Docker daemon at DOCKER_HOST={} cannot reach this machine's loopback \
             (it runs on another host or in another network namespace); run dos pull \
             where that daemon runs",
            docker_host()
        ))
    } else {
        e
    }
}

fn tls_wanted(host: &str) -> bool {
    host.starts_with("https://") || crate::settings::docker_tls_verify()
}

fn cert_dir() -> Result<std::path::PathBuf> {
    crate::settings::docker_cert_dir()
        .context("DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor HOME is")
}
