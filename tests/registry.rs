//! The embedded registry, driven by real clients: the Docker daemon's push
//! and pull, skopeo, and raw HTTP for the parts of the spec clients use
//! rarely (chunk ordering, mounts, negotiation, digest checks).

mod common;

use common::*;
use dos::registry::Registry;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

async fn daemon(host: &str) -> dos::docker::Daemon {
    dos::docker::Daemon::connect_to(host).await.unwrap()
}

#[tokio::test]
async fn docker_push_then_docker_pull_into_another_daemon() {
    let e = need_env!();
    let image = format!("{}:1", unique("reg-docker"));
    let repo_name = image.split(':').next().unwrap().to_string();
    let id = build_image(&e.local, &image, 11, 300 * 1024, "via registry\n");

    let reg = Registry::start().await.unwrap();
    let addr = reg.addr().to_string();
    let repo = format!("{addr}/{repo_name}");
    let local = daemon(&e.local).await;
    local.tag(&image, &repo, "1").await.unwrap();
    local
        .push(&repo, "1", reg.credentials().docker(&addr))
        .await
        .unwrap();
    // A second push of the same image finds every blob already there.
    local
        .push(&repo, "1", reg.credentials().docker(&addr))
        .await
        .unwrap();

    let peer = daemon(&e.peer).await;
    peer.pull(&repo, "1", reg.credentials().docker(&addr))
        .await
        .unwrap();
    assert_eq!(
        image_id(&e.peer, &format!("{repo}:1")).as_deref(),
        Some(id.as_str())
    );
    // By digest too.
    let digest = docker(
        &e.peer,
        &[
            "image",
            "inspect",
            "-f",
            "{{index .RepoDigests 0}}",
            &format!("{repo}:1"),
        ],
    );
    peer.untag(&format!("{repo}:1")).await.unwrap();
    peer.untag(&digest).await.unwrap();
    let d = digest.split('@').nth(1).unwrap();
    peer.pull(&repo, d, reg.credentials().docker(&addr))
        .await
        .unwrap();
    assert_eq!(image_id(&e.peer, &digest).as_deref(), Some(id.as_str()));
    peer.untag(&digest).await.unwrap();
    local.untag(&format!("{repo}:1")).await.unwrap();
}

#[tokio::test]
async fn skopeo_pushes_and_docker_pulls() {
    let e = need_env!();
    let image = format!("{}:1", unique("reg-skopeo"));
    let repo_name = image.split(':').next().unwrap().to_string();
    let id = build_image(&e.local, &image, 12, 200 * 1024, "via skopeo\n");
    let reg = Registry::start().await.unwrap();
    let addr = reg.addr().to_string();
    let c = reg.credentials();
    let creds = format!("{}:{}", c.username, c.password);
    let dest = format!("docker://{addr}/{repo_name}:sk");
    let sock = e.local.clone();
    let out = tokio::task::spawn_blocking({
        let (creds, dest, image) = (creds.clone(), dest.clone(), image.clone());
        move || {
            std::process::Command::new("skopeo")
                .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
                .arg("--src-daemon-host")
                .arg(&sock)
                .arg(format!("docker-daemon:{image}"))
                .arg(&dest)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // skopeo reads it back (manifest + config) ...
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", &creds, &dest])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sha256:"));

    // ... and the docker daemon pulls what skopeo pushed: same image ID.
    let repo = format!("{addr}/{repo_name}");
    let peer = daemon(&e.peer).await;
    peer.pull(&repo, "sk", c.docker(&addr)).await.unwrap();
    assert_eq!(
        image_id(&e.peer, &format!("{repo}:sk")).as_deref(),
        Some(id.as_str())
    );
    peer.untag(&format!("{repo}:sk")).await.unwrap();
}

struct Client {
    base: String,
    http: reqwest::Client,
    auth: String,
}

impl Client {
    fn new(reg: &Registry) -> Client {
        Client {
            base: format!("http://{}", reg.addr()),
            http: reqwest::Client::new(),
            auth: reg.credentials().basic_header(),
        }
    }
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.http
            .request(m, url)
            .header("Authorization", &self.auth)
    }
    async fn upload(&self, repo: &str, blob: &[u8]) {
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={}", sha(blob)),
            )
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn requests_without_credentials_get_401() {
    let reg = Registry::start().await.unwrap();
    let r = reqwest::get(format!("http://{}/v2/", reg.addr()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let c = Client::new(&reg);
    let r = c.req(reqwest::Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn chunked_upload_checks_order_and_digest() {
    let reg = Registry::start().await.unwrap();
    let c = Client::new(&reg);
    let blob = pseudo_random(5, 100_000);
    let r = c
        .req(reqwest::Method::POST, "/v2/a/b/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["range"], "0-0");
    let mut sent = 0;
    for chunk in blob.chunks(30_000) {
        let r = c
            .req(reqwest::Method::PATCH, &loc)
            .header(
                "Content-Range",
                format!("{}-{}", sent, sent + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        sent += chunk.len();
        assert_eq!(
            r.headers()["range"].to_str().unwrap(),
            format!("0-{}", sent - 1)
        );
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    // A chunk that doesn't start where the last ended is refused.
    let r = c
        .req(reqwest::Method::PATCH, &loc)
        .header("Content-Range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Status of the upload.
    let r = c.req(reqwest::Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", blob.len() - 1)
    );
    // Completing with the wrong digest fails and discards the upload.
    let wrong = sha(b"something else");
    let r = c
        .req(reqwest::Method::PUT, &format!("{loc}?digest={wrong}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));
    let r = c
        .req(
            reqwest::Method::PUT,
            &format!("{loc}?digest={}", sha(&blob)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The same again, completed correctly (last chunk in the PUT body).
    let r = c
        .req(reqwest::Method::POST, "/v2/a/b/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .req(reqwest::Method::PATCH, &loc)
        .body(blob[..60_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .req(
            reqwest::Method::PUT,
            &format!("{loc}?digest={}", sha(&blob)),
        )
        .body(blob[60_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        sha(&blob)
    );

    // HEAD gives the size; GET the bytes; a range the tail.
    let path = format!("/v2/a/b/blobs/{}", sha(&blob));
    let r = c.req(reqwest::Method::HEAD, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        blob.len().to_string()
    );
    let r = c.req(reqwest::Method::GET, &path).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[..]);
    let r = c
        .req(reqwest::Method::GET, &path)
        .header("Range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[99_990..]);
    // Other repositories don't see it until it is mounted.
    let other = format!("/v2/c/blobs/{}", sha(&blob));
    assert_eq!(
        c.req(reqwest::Method::HEAD, &other)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn cross_repository_mounts() {
    let reg = Registry::start().await.unwrap();
    let c = Client::new(&reg);
    let blob = b"layer bytes".to_vec();
    c.upload("src", &blob).await;
    let d = sha(&blob);
    // From a repository that has it: 201, and the blob is now visible.
    let r = c
        .req(
            reqwest::Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/v2/dst/blobs/{d}")
    );
    let r = c
        .req(reqwest::Method::HEAD, &format!("/v2/dst/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // From one that doesn't: an ordinary upload session (202).
    let r = c
        .req(
            reqwest::Method::POST,
            &format!("/v2/dst2/blobs/uploads/?mount={d}&from=nowhere"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/v2/dst2/blobs/uploads/"));
}

#[tokio::test]
async fn manifests_by_tag_and_digest_with_negotiation() {
    let reg = Registry::start().await.unwrap();
    let c = Client::new(&reg);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = b"not really a tar".to_vec();
    let mt = "application/vnd.docker.distribution.manifest.v2+json";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": sha(&config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": sha(&layer)}],
    })
    .to_string();
    // Referencing blobs the repository lacks is refused.
    let r = c
        .req(reqwest::Method::PUT, "/v2/app/manifests/1")
        .header("Content-Type", mt)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("MANIFEST_BLOB_UNKNOWN"));
    c.upload("app", &config).await;
    c.upload("app", &layer).await;
    let r = c
        .req(reqwest::Method::PUT, "/v2/app/manifests/1")
        .header("Content-Type", mt)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let d = sha(manifest.as_bytes());
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);

    for reference in ["1", d.as_str()] {
        let path = format!("/v2/app/manifests/{reference}");
        let r = c
            .req(reqwest::Method::GET, &path)
            .header("Accept", format!("{mt}, application/json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], mt);
        assert_eq!(r.text().await.unwrap(), manifest);
        let r = c
            .req(reqwest::Method::HEAD, &path)
            .header("Accept", mt)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            manifest.len().to_string()
        );
        // A client that only takes OCI types is told it is not available.
        let r = c
            .req(reqwest::Method::GET, &path)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // A digest that doesn't match the body is refused.
    let r = c
        .req(
            reqwest::Method::PUT,
            &format!("/v2/app/manifests/{}", sha(b"x")),
        )
        .header("Content-Type", mt)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .req(reqwest::Method::GET, "/v2/app/tags/list")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"name":"app","tags":["1"]}"#);
    let r = c
        .req(reqwest::Method::GET, "/v2/app/manifests/2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
