//! The relay gate in front of a real registry: only the transfer's
//! credentials, and only reads of the offered repository, get through.

use dos::auth::Credentials;
use dos::gate::Gate;
use dos::registry::Registry;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn only_authenticated_reads_of_the_offered_repository_pass() {
    let reg = Registry::start().await.unwrap();
    let regc = reg.credentials().clone();
    let http = reqwest::Client::new();
    let base = format!("http://{}", reg.addr());
    // Two repositories in the registry; the gate offers only "offered".
    let blob = b"secret layer".to_vec();
    let d = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    for repo in ["offered", "other"] {
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .header("Authorization", regc.basic_header())
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    let pull = Credentials::generate("dos-pull");
    let gate = Gate::new(
        base.clone(),
        Some(regc.clone()),
        pull.clone(),
        "offered".into(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    dos::http::serve_listener(listener, stop.clone(), move |req| gate.clone().handle(req));
    let url = |p: &str| format!("http://{gate_addr}{p}");

    // No credentials, or someone else's: 401 and nothing else.
    for auth in [
        None,
        Some(Credentials::generate("dos-pull").basic_header()),
        Some(regc.basic_header()),
    ] {
        let mut r = http.get(url(&format!("/v2/offered/blobs/{d}")));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(!r.text().await.unwrap().contains("secret"));
    }
    let ok = |m: reqwest::Method, p: &str| {
        http.request(m, url(p))
            .header("Authorization", pull.basic_header())
    };
    // The offered repository: readable.
    let r = ok(reqwest::Method::GET, &format!("/v2/offered/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[..]);
    let r = ok(reqwest::Method::HEAD, &format!("/v2/offered/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        blob.len().to_string()
    );
    assert_eq!(
        ok(reqwest::Method::GET, "/v2/")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Another repository, writes, deletes, listings: refused.
    for (m, p) in [
        (reqwest::Method::GET, format!("/v2/other/blobs/{d}")),
        (
            reqwest::Method::POST,
            "/v2/offered/blobs/uploads/".to_string(),
        ),
        (
            reqwest::Method::PUT,
            "/v2/offered/manifests/evil".to_string(),
        ),
        (
            reqwest::Method::DELETE,
            "/v2/offered/manifests/1".to_string(),
        ),
        (reqwest::Method::GET, "/v2/offered/tags/list".to_string()),
        (reqwest::Method::GET, "/v2/_catalog".to_string()),
    ] {
        let r = ok(m.clone(), &p).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{m} {p}");
    }
    stop.cancel();
}
