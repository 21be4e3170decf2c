//! LOCAL_DOCKER_REGISTRY_PORT: a registry that is already running (here
//! Debian's docker-registry, the same program as the registry:2 image CI
//! service containers run) is used as it is, and dos starts none of its own.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

struct ServiceRegistry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for ServiceRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start docker-registry on 127.0.0.1 port 0 and read the port it got from
/// its log.
fn start_registry() -> ServiceRegistry {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker-registry (Debian package docker-registry) is installed");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("docker-registry exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServiceRegistry {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn the_service_registry_is_used_and_nothing_else_is_started() {
    let e = need_env!();
    let reg = start_registry();
    let image = format!("{}:1", unique("service-reg"));
    let repo = image.split(':').next().unwrap().to_string();
    let id = build_image(&e.local, &image, fresh_seed(), 32 * 1024, "service\n");
    let port = reg.port.to_string();
    let pull = format!("DOCKER_HOST={} dos pull {image}", e.peer);
    let out = dos_env(
        &e.local,
        &["-v", "push", &image, "sh", "-c", &pull],
        &[("LOCAL_DOCKER_REGISTRY_PORT", &port)],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "dos push failed: {err}");
    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));
    // It went through the service registry, as the original tool did ...
    assert!(err.contains("via registry"), "{err}");
    assert!(
        err.contains(&format!("registry at 127.0.0.1:{port}")),
        "{err}"
    );
    // ... which now holds the image,
    let catalog = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(catalog.contains(&repo), "{catalog}");
    // ... and dos started no registry of its own.
    assert!(!err.contains("embedded registry listening"), "{err}");
    assert!(loopback_names(&e.local, &repo).is_empty());
}
