//! An endpoint on an address of our choosing that admits only requests
//! carrying the push's credentials: the same rule ngrok's edge applies,
//! enforced here per request. The tests use it where a real deployment uses
//! ngrok; it also serves a daemon that reaches this machine over a private
//! network (its daemon must then list the address as an insecure registry).

use std::io;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::net::TcpListener;

use super::{Conn, Endpoint, Tunnel};
use crate::auth::Credentials;

pub struct Guarded {
    /// Where to listen; port 0 picks one.
    pub bind: SocketAddr,
}

struct GuardedEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Tunnel for Guarded {
    fn name(&self) -> &'static str {
        "guarded endpoint"
    }

    fn open<'a>(&'a self, _creds: &'a Credentials) -> BoxFuture<'a, Result<Box<dyn Endpoint>>> {
        async move {
            let listener = TcpListener::bind(self.bind)
                .await
                .with_context(|| format!("listening on {}", self.bind))?;
            let addr = listener.local_addr()?;
            Ok(Box::new(GuardedEndpoint { listener, addr }) as Box<dyn Endpoint>)
        }
        .boxed()
    }
}

impl Endpoint for GuardedEndpoint {
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn edge_checks_auth(&self) -> bool {
        false
    }

    fn accept(&mut self) -> BoxFuture<'_, Option<io::Result<Conn>>> {
        async move {
            Some(self.listener.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Conn
            }))
        }
        .boxed()
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        // Dropping the listener closes the port.
        drop(self);
        async {}.boxed()
    }
}
