//! The registry through an ngrok endpoint (DOCKER_REGISTRY_NGROK).
//!
//! ngrok's edge requires basic auth with the push's generated credentials;
//! connections are served in this process (no local port is opened for
//! them). The session has no connect timeout of its own, so every step here
//! is bounded, and the endpoint and session are closed when the push ends.

use std::io;
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use ngrok::config::TunnelBuilder;
use ngrok::prelude::{EndpointInfo, TunnelCloser};
use ngrok::tunnel::HttpTunnel;
use ngrok::Session;

use super::{Conn, Endpoint, Tunnel};
use crate::auth::Credentials;

/// How long connecting to ngrok and opening the endpoint may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Ngrok {
    authtoken: String,
    timeout: Duration,
}

impl Ngrok {
    pub fn new(authtoken: String) -> Ngrok {
        Ngrok {
            authtoken,
            timeout: TIMEOUT,
        }
    }
}

struct NgrokEndpoint {
    session: Session,
    tunnel: HttpTunnel,
    host: String,
}

const ADVICE: &str = "check the authtoken (DOCKER_REGISTRY_NGROK or NGROK_AUTHTOKEN) and that this machine can reach ngrok (outbound HTTPS to connect.ngrok-agent.com:443)";

impl Tunnel for Ngrok {
    fn name(&self) -> &'static str {
        "ngrok"
    }

    fn open<'a>(&'a self, creds: &'a Credentials) -> BoxFuture<'a, Result<Box<dyn Endpoint>>> {
        async move {
            let secs = self.timeout.as_secs();
            let session = tokio::time::timeout(
                self.timeout,
                Session::builder()
                    .authtoken(self.authtoken.clone())
                    .connect(),
            )
            .await
            .map_err(|_| anyhow!("ngrok: no session after {secs}s; {ADVICE}"))?
            .map_err(|e| anyhow!("ngrok: connecting failed: {e}; {ADVICE}"))?;
            let tunnel = tokio::time::timeout(
                self.timeout,
                session
                    .http_endpoint()
                    .basic_auth(creds.username.clone(), creds.password.clone())
                    .forwards_to("dos push registry")
                    .listen(),
            )
            .await
            .map_err(|_| anyhow!("ngrok: the endpoint did not open within {secs}s; {ADVICE}"))?
            .map_err(|e| anyhow!("ngrok: opening the endpoint failed: {e}"))?;
            let host = tunnel
                .url()
                .split_once("://")
                .map_or(tunnel.url(), |(_, h)| h)
                .trim_end_matches('/')
                .to_string();
            tracing::info!("dos: registry reachable through ngrok at {host} (basic auth)");
            Ok(Box::new(NgrokEndpoint {
                session,
                tunnel,
                host,
            }) as Box<dyn Endpoint>)
        }
        .boxed()
    }
}

impl Endpoint for NgrokEndpoint {
    fn host(&self) -> String {
        self.host.clone()
    }

    fn edge_checks_auth(&self) -> bool {
        true
    }

    fn accept(&mut self) -> BoxFuture<'_, Option<io::Result<Conn>>> {
        async move {
            self.tunnel
                .next()
                .await
                .map(|r| r.map(|c| Box::new(c) as Conn).map_err(io::Error::other))
        }
        .boxed()
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        let NgrokEndpoint {
            mut session,
            mut tunnel,
            ..
        } = *self;
        async move {
            let bounded = Duration::from_secs(5);
            if let Err(e) = tokio::time::timeout(bounded, tunnel.close()).await {
                tracing::debug!("ngrok: closing the endpoint: {e}");
            }
            if let Err(e) = tokio::time::timeout(bounded, session.close()).await {
                tracing::debug!("ngrok: closing the session: {e}");
            }
        }
        .boxed()
    }
}
