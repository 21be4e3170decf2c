//! A detached local daemon, like CI's remote docker: the remote host's
//! daemon reached over tcp, so its loopback is not this machine's. The
//! delta path needs no tunnel; the registry path needs one (ngrok in real
//! use, a guarded endpoint with the same basic auth here) or stops early
//! with advice.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dos::auth::Credentials;
use dos::push::{PushOptions, Via};
use dos::setup::Environment;
use dos::tunnel::forward::Forward;
use dos::tunnel::guarded::Guarded;
use dos::tunnel::{self, Endpoint, Tunnel};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

fn pull_into_peer(e: &Env, image: &str) -> String {
    format!("DOCKER_HOST={} {} pull {image}", e.peer, dos_bin())
}

#[test]
fn delta_from_a_detached_daemon_needs_no_tunnel() {
    let e = need_env!();
    let image = format!("{}:1", unique("detached-delta"));
    let id = build_image(&e.detached, &image, fresh_seed(), 64 * 1024, "detached\n");
    let out = dos(
        &e.detached,
        &["push", &image, "sh", "-c", &pull_into_peer(e, &image)],
    );
    assert!(out.status.success(), "dos push failed: {}", stderr(&out));
    assert!(stderr(&out).contains("via delta"), "{}", stderr(&out));
    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));
}

#[test]
fn registry_path_from_a_detached_daemon_without_a_tunnel_stops_with_advice() {
    let e = need_env!();
    let image = format!("{}:1", unique("detached-stop"));
    build_image(&e.detached, &image, 3, 1024, "stop\n");
    let marker = tempfile::tempdir().unwrap();
    let started = marker.path().join("started");
    let cmd = format!(
        "touch {} && {}",
        started.display(),
        pull_into_peer(e, &image)
    );
    let out = dos(
        &e.detached,
        &["push", "--via", "registry", &image, "sh", "-c", &cmd],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("DOCKER_REGISTRY_NGROK") && err.contains("delta"),
        "{err}"
    );
    assert!(!started.exists(), "the transport command was started");
    assert_eq!(image_id(&e.peer, &image), None);

    // --explain says the same without trying.
    let out = dos(
        &e.detached,
        &["push", "--explain", "--via", "registry", &image, "ssh", "x"],
    );
    assert!(out.status.success());
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("would stop") && plan.contains("DOCKER_REGISTRY_NGROK"),
        "{plan}"
    );
}

/// A [`Guarded`] endpoint that remembers where it listened.
struct Recorded {
    inner: Guarded,
    hosts: Mutex<Vec<String>>,
}

impl Tunnel for Recorded {
    fn name(&self) -> &'static str {
        "guarded endpoint"
    }
    fn open<'a>(
        &'a self,
        creds: &'a Credentials,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Endpoint>>> {
        async move {
            let ep = self.inner.open(creds).await?;
            self.hosts.lock().unwrap().push(ep.host());
            Ok(ep)
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_path_from_a_detached_daemon_through_a_guarded_tunnel() {
    let e = need_env!();
    let image = format!("{}:1", unique("detached-tunnel"));
    let repo = image.split(':').next().unwrap().to_string();
    let id = build_image(&e.detached, &image, fresh_seed(), 64 * 1024, "tunneled\n");
    let tunnel = Arc::new(Recorded {
        inner: Guarded {
            bind: format!("{}:0", e.local_ip).parse().unwrap(),
        },
        hosts: Mutex::default(),
    });
    let mut opts = PushOptions::new(
        image.clone(),
        vec!["sh".into(), "-c".into(), pull_into_peer(e, &image)],
    );
    opts.via = Via::Registry;
    opts.env = Environment::from_vars(|_| None);
    opts.docker_host = Some(e.detached.clone());
    opts.tunnel = Some(tunnel.clone());
    let report = dos::push::push(opts)
        .await
        .expect("push through the tunnel");
    assert_eq!(report.path, "registry");
    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));

    // The endpoint is closed and no name under it is left on the daemon.
    let host = tunnel
        .hosts
        .lock()
        .unwrap()
        .pop()
        .expect("the tunnel was opened");
    assert!(
        tokio::net::TcpStream::connect(&host).await.is_err(),
        "{host} still open"
    );
    assert!(names_under(&e.detached, &e.local_ip, &repo).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tunnel_endpoint_admits_only_the_push_credentials() {
    let e = need_env!();
    let registry = dos::registry::Registry::start().await.unwrap();
    let creds = Credentials::generate("dos-push");
    let guarded = Guarded {
        bind: "127.0.0.1:0".parse().unwrap(),
    };
    let ep = guarded.open(&creds).await.unwrap();
    let forward = Forward::new(
        format!("http://{}", registry.addr()),
        Some(registry.credentials().clone()),
        creds.clone(),
        ep.edge_checks_auth(),
        "team/app".into(),
    );
    let serving = tunnel::serve(ep, forward);
    let base = format!("http://{}", serving.host());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str, auth: Option<&Credentials>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(c) = auth {
            r = r.basic_auth(&c.username, Some(&c.password));
        }
        r.send()
    };
    let wrong = Credentials {
        username: creds.username.clone(),
        password: "not-the-password".into(),
    };
    assert_eq!(get("/v2/", None).await.unwrap().status(), 401);
    assert_eq!(get("/v2/", Some(&wrong)).await.unwrap().status(), 401);
    assert_eq!(get("/v2/", Some(&creds)).await.unwrap().status(), 200);
    // Only the pushed repository.
    let other = get("/v2/other/manifests/1", Some(&creds)).await.unwrap();
    assert_eq!(other.status(), 403);

    // A real docker push through it with the right credentials.
    let image = format!("{}:1", unique("tunnel-auth"));
    build_image(&e.local, &image, 5, 1024, "auth\n");
    let target = format!("{}/team/app:1", serving.host());
    docker(&e.local, &["tag", &image, &target]);
    let daemon = dos::docker::Daemon::connect_to(&e.local).await.unwrap();
    let pushed = daemon
        .push(
            &format!("{}/team/app", serving.host()),
            "1",
            creds.docker(serving.host()),
        )
        .await;
    docker(&e.local, &["rmi", &target]);
    pushed.expect("docker push through the endpoint");
    let listed = get("/v2/team/app/manifests/1", Some(&creds)).await.unwrap();
    assert_eq!(listed.status(), 200);

    let host = serving.host().to_string();
    serving.close().await;
    assert!(
        tokio::net::TcpStream::connect(&host).await.is_err(),
        "{host} still open"
    );
}

#[test]
fn ngrok_without_network_fails_clearly_in_bounded_time() {
    let e = need_env!();
    let image = format!("{}:1", unique("ngrok-fail"));
    let repo = image.split(':').next().unwrap().to_string();
    build_image(&e.detached, &image, 6, 1024, "ngrok\n");
    let started = Instant::now();
    let out = dos_env(
        &e.detached,
        &[
            "push",
            "--via",
            "registry",
            &image,
            "sh",
            "-c",
            &pull_into_peer(e, &image),
        ],
        &[(
            "DOCKER_REGISTRY_NGROK",
            "2invalidtokenXXXXXXXXXXXXXXXX_XXXXXXXXXXXXXXXXXXXXX",
        )],
    );
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ngrok"), "{err}");
    assert!(
        err.contains("NGROK_AUTHTOKEN") || err.contains("authtoken"),
        "{err}"
    );
    assert!(
        took < dos::tunnel::ngrok::TIMEOUT + Duration::from_secs(15),
        "took {took:?}"
    );
    assert_eq!(image_id(&e.peer, &image), None);
    for prefix in ["127.0.0.1:", "10.", "ngrok"] {
        assert!(names_under(&e.detached, prefix, &repo).is_empty());
    }
}
