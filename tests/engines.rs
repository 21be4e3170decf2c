//! Today's engines, end to end: the real dos binary moves images from
//! Docker's classic store and from Docker's containerd image store to each
//! far engine (classic, containerd store, podman), over ssh to the second
//! host. Each cell runs five transfers (cold, same, update, foreign base,
//! an image repeating a layer) and checks, on the far engine itself: the config digest and the diffIDs
//! are the source's, the image ID too where both engines name images the
//! same way, the container runs, no temporary name is left on either side,
//! and an update or a foreign base sends little more than the new layer.

mod common;

use std::io::Read;

use common::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Classic,
    Containerd,
    Podman,
}

impl Kind {
    /// Engines naming images by their config digest (classic, podman) or
    /// by their manifest's (containerd store).
    fn config_ids(self) -> bool {
        self != Kind::Containerd
    }
}

struct End {
    kind: Kind,
    /// Environment for a dos pushing from here.
    vars: &'static [(&'static str, &'static str)],
    /// DOCKER_HOST for this process (a unix socket on this machine).
    host: String,
}

fn source(e: &Env, kind: Kind) -> End {
    let host = match kind {
        Kind::Classic => e.local.clone(),
        Kind::Containerd => e.c_local.clone(),
        Kind::Podman => unreachable!("podman is only a far side"),
    };
    End {
        kind,
        vars: &[],
        host,
    }
}

fn far(e: &Env, kind: Kind) -> End {
    let host = match kind {
        Kind::Classic => e.remote.clone(),
        Kind::Containerd => e.c_remote.clone(),
        Kind::Podman => e.podman.clone(),
    };
    End {
        kind,
        vars: &[],
        host,
    }
}

/// `dos push [FLAGS] IMAGE ssh remote env DOCKER_HOST=… dos pull IMAGE`,
/// the far dos logging at `far_log` (if not empty; its log comes back on
/// ssh's stderr).
fn push(
    e: &Env,
    src: &End,
    dst: &End,
    flags: &[&str],
    image: &str,
    far_log: &str,
) -> std::process::Output {
    let log = if far_log.is_empty() {
        String::new()
    } else {
        format!(" DOS_LOG={far_log}")
    };
    let pull = format!("env DOCKER_HOST={}{log} dos pull {image}", dst.host);
    let mut args = vec!["push"];
    args.extend_from_slice(flags);
    args.extend([image, "ssh", "-F", &e.ssh_config, "remote", &pull]);
    dos_env(&src.host, &args, src.vars)
}

/// The image's config digest and diffIDs, read from the engine's own
/// export (a `docker save` archive names its config in manifest.json, on
/// every engine). The export also fails if the image is incomplete.
fn identity(host: &str, image: &str) -> (String, Vec<String>) {
    let out = std::process::Command::new("docker")
        .args(["save", image])
        .env("DOCKER_HOST", host)
        .output()
        .expect("docker save");
    assert!(
        out.status.success(),
        "docker save {image} on {host}: {}",
        stderr(&out)
    );
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let mut files = std::collections::HashMap::new();
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path == "manifest.json" || path.ends_with(".json") || path.starts_with("blobs/") {
            let mut b = Vec::new();
            entry.read_to_end(&mut b).unwrap();
            files.insert(path, b);
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config_path = manifest[0]["Config"].as_str().unwrap().to_string();
    let config = files.get(&config_path).unwrap_or_else(|| {
        panic!("docker save of {image} on {host} lacks its config {config_path}")
    });
    let digest = format!("sha256:{}", sha256_hex(config));
    let cfg: serde_json::Value = serde_json::from_slice(config).unwrap();
    let diff_ids = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    (digest, diff_ids)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Run the image's command on the engine and return its output, with
/// explicit limits (the engines' defaults are above what this sandbox lets
/// runc set). Podman 4.3's compat API neither attaches for today's docker
/// CLI nor passes the limits on, so there the podman CLI runs it, on the
/// storage the API serves.
fn run(e: &Env, end: &End, image: &str) -> String {
    let limits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ];
    if end.kind == Kind::Podman {
        let out = std::process::Command::new("podman")
            .args(e.podman_store.split(' '))
            .args(["run", "--rm", "--network", "none"])
            .args(limits)
            .arg(image)
            .output()
            .expect("running podman");
        assert!(out.status.success(), "podman run {image}: {}", stderr(&out));
        return String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend(limits);
    args.push(image);
    docker(&end.host, &args)
}

/// No relay, capture or probe name left on the engine. The cells run at
/// once and share the engines, so a name seen may be another cell's push at
/// work (a probe's name lives for some milliseconds): what is left behind
/// is a name that is still there seconds later.
fn assert_no_temporary_names(host: &str) {
    let temporary = || -> std::collections::HashSet<String> {
        docker(
            host,
            &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        )
        .lines()
        .filter(|n| {
            n.starts_with("127.0.0.1") || n.contains("dos-probe") || n.contains("dos-capture")
        })
        .map(str::to_string)
        .collect()
    };
    let mut left = temporary();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = temporary();
        left.retain(|n| now.contains(n));
    }
    assert!(left.is_empty(), "temporary names left on {host}: {left:?}");
}

/// Build `base` (busybox and `base_bytes` of random data) and `app` on it
/// (one more layer of `app_bytes` random bytes and a text file), on the
/// source engine itself.
fn build(host: &str, base: &str, app: &str, seed: u64, app_bytes: usize, text: &str) {
    let e = env().expect("environment");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(&e.busybox, d.join("busybox")).unwrap();
    std::fs::write(d.join("base.bin"), pseudo_random(seed, 512 * 1024)).unwrap();
    std::fs::write(d.join("app.bin"), pseudo_random(seed ^ 0xa5a5, app_bytes)).unwrap();
    std::fs::write(d.join("app.txt"), text).unwrap();
    if image_id(host, base).is_none() {
        std::fs::write(
            d.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY base.bin /base.bin\n",
        )
        .unwrap();
        docker_build(host, base, d);
    }
    std::fs::write(
        d.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY app.bin /app.bin\nCOPY app.txt /app.txt\n\
             CMD [\"/bin/busybox\", \"cat\", \"/app.txt\"]\n"
        ),
    )
    .unwrap();
    docker_build(host, app, d);
}

/// `base`: busybox and `base_bytes` of random data in one layer; `app` on
/// it: a text file. Built on the source engine itself.
fn build_sized(host: &str, base: &str, app: &str, seed: u64, base_bytes: usize, text: &str) {
    let e = env().expect("environment");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(&e.busybox, d.join("busybox")).unwrap();
    std::fs::write(d.join("base.bin"), pseudo_random(seed, base_bytes)).unwrap();
    std::fs::write(d.join("app.txt"), text).unwrap();
    std::fs::write(
        d.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY base.bin /base.bin\n",
    )
    .unwrap();
    docker_build(host, base, d);
    std::fs::write(
        d.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY app.txt /app.txt\nCMD [\"/bin/busybox\", \"cat\", \"/app.txt\"]\n"
        ),
    )
    .unwrap();
    docker_build(host, app, d);
}

/// `image`: busybox, the same file copied twice (two identical layers, one
/// diffID twice), then a text file. Built by the classic store's builder
/// (BuildKit leaves out a step that changes nothing) and, for another
/// source engine, moved there by `docker save | docker load`, as an image
/// pulled from a registry would arrive.
fn build_repeated(host: &str, image: &str, seed: u64, bytes: usize, text: &str) {
    let e = env().expect("environment");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(&e.busybox, d.join("busybox")).unwrap();
    std::fs::write(d.join("app.bin"), pseudo_random(seed ^ 0xa5a5, bytes)).unwrap();
    std::fs::write(d.join("app.txt"), text).unwrap();
    std::fs::write(
        d.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY app.bin /app.bin\nCOPY app.bin /app.bin\n\
         COPY app.txt /app.txt\nCMD [\"/bin/busybox\", \"cat\", \"/app.txt\"]\n",
    )
    .unwrap();
    if image_id(&e.local, image).is_none() {
        let out = std::process::Command::new("docker")
            .args(["build", "-q", "--network", "none", "-t", image])
            .arg(d)
            .env("DOCKER_HOST", &e.local)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("docker build");
        assert!(
            out.status.success(),
            "docker build {image}: {}",
            stderr(&out)
        );
    }
    if host != e.local {
        copy_image(&e.local, host, image);
    }
}

/// zstd (level 3) of the random data `app` adds: a lower bound on what an
/// update must send, whatever its framing.
fn changed_zstd(seed: u64, app_bytes: usize) -> u64 {
    zstd::bulk::compress(&pseudo_random(seed ^ 0xa5a5, app_bytes), 3)
        .unwrap()
        .len() as u64
}

/// One transfer, and everything checked about it. Returns the bytes sent
/// and the pusher's log.
fn transfer(e: &Env, src: &End, dst: &End, image: &str, text: &str) -> (u64, String) {
    transfer_logged(e, src, dst, image, text, "")
}

/// [`transfer`], the far dos logging at `far_log`.
fn transfer_logged(
    e: &Env,
    src: &End,
    dst: &End,
    image: &str,
    text: &str,
    far_log: &str,
) -> (u64, String) {
    let out = push(e, src, dst, &[], image, far_log);
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "{:?} -> {:?}: dos push {image} failed: {log}",
        src.kind,
        dst.kind
    );
    let (src_config, src_layers) = identity(&src.host, image);
    let (far_config, far_layers) = identity(&dst.host, image);
    assert_eq!(far_config, src_config, "config digest on the far engine");
    assert_eq!(far_layers, src_layers, "diffIDs on the far engine");
    let (src_id, far_id) = (
        image_id(&src.host, image).unwrap(),
        image_id(&dst.host, image).unwrap(),
    );
    // Where both engines name images the same way, the IDs match: by the
    // config (classic, podman), or by the manifest, which between two
    // containerd stores is the source's own (its compressed blobs cross as
    // they are).
    if src.kind.config_ids() == dst.kind.config_ids() {
        assert_eq!(far_id, src_id, "image ID on the far engine");
    }
    if dst.kind.config_ids() {
        assert_eq!(
            far_id, src_config,
            "a config-named far engine names it by its config"
        );
    }
    assert!(
        log.contains(&far_id),
        "the pusher reports the far ID {far_id}: {log}"
    );
    assert_eq!(run(e, dst, image), text.trim());
    assert_no_temporary_names(&src.host);
    assert_no_temporary_names(&dst.host);
    (bytes_sent(&log), log)
}

fn cell(src_kind: Kind, far_kind: Kind) {
    cell_with(src_kind, far_kind, &[], "");
}

/// A cell with `vars` set for the pushing dos, which must say it read the
/// update's layers `read_by` (if not empty).
fn cell_with(
    src_kind: Kind,
    far_kind: Kind,
    vars: &'static [(&'static str, &'static str)],
    read_by: &str,
) {
    let e = need_env!();
    let (mut src, dst) = (source(e, src_kind), far(e, far_kind));
    src.vars = vars;
    let variant = if vars.is_empty() { "" } else { "-env" };
    let name = unique(&format!("m-{src_kind:?}-{far_kind:?}{variant}").to_lowercase());
    let seed = fresh_seed();
    let app_bytes = 192 * 1024;
    let (base, v1, v2) = (
        format!("{name}-base:1"),
        format!("{name}:1"),
        format!("{name}:2"),
    );

    // Cold: nothing of it on the far side.
    build(&src.host, &base, &v1, seed, app_bytes, "v1\n");
    let (cold, _) = transfer(e, &src, &dst, &v1, "v1\n");
    assert!(cold > 512 * 1024, "a cold transfer sent only {cold} bytes");

    // Same: the far side has it already.
    let (same, _) = transfer(e, &src, &dst, &v1, "v1\n");
    assert!(
        same < 16 * 1024,
        "re-sending an image the far side has sent {same} bytes"
    );

    // Update: only the changed layers cross.
    build(&src.host, &base, &v2, seed + 1, app_bytes, "v2\n");
    let (update, log) = transfer(e, &src, &dst, &v2, "v2\n");
    assert!(
        log.contains(read_by),
        "the layers were not read {read_by}: {log}"
    );
    let bound = changed_zstd(seed + 1, app_bytes) * 12 / 10;
    assert!(
        update <= bound,
        "an update sent {update} bytes; the changed layer is {bound} / 1.2 as zstd"
    );

    // Foreign base: the far side got the base another way (docker load).
    let (fbase, f1) = (format!("{name}-fbase:1"), format!("{name}-f:1"));
    build(&src.host, &fbase, &f1, seed + 2, app_bytes, "foreign\n");
    copy_image(&src.host, &dst.host, &fbase);
    let (foreign, _) = transfer(e, &src, &dst, &f1, "foreign\n");
    let bound = changed_zstd(seed + 2, app_bytes) * 12 / 10;
    assert!(
        foreign <= bound,
        "a foreign-base transfer sent {foreign} bytes; the new layer is {bound} / 1.2 as zstd"
    );

    // A layer repeated (identical steps are ordinary): it crosses once.
    let rep = format!("{name}-rep:1");
    let rep_bytes = 2 << 20;
    build_repeated(&src.host, &rep, seed + 3, rep_bytes, "repeated\n");
    let (_, layers) = identity(&src.host, &rep);
    assert_eq!(layers.len(), 4, "{layers:?}");
    assert_eq!(
        layers[1], layers[2],
        "the two copies are one layer: {layers:?}"
    );
    let (repeated, _) = transfer(e, &src, &dst, &rep, "repeated\n");
    // The layer once, busybox and framing: well under the layer twice.
    let bound = changed_zstd(seed + 3, rep_bytes) + (2 << 20);
    assert!(
        repeated <= bound,
        "an image repeating a layer sent {repeated} bytes; the layer once and busybox are under {bound}"
    );

    // Big: the bottom layers, past the segment size, load as an image of
    // dos's while the top one arrives; that image is gone afterwards.
    let (big_base, big) = (format!("{name}-bigbase:1"), format!("{name}-big:1"));
    build_sized(&src.host, &big_base, &big, seed + 4, 17 << 20, "big\n");
    // Where the layers are read by docker save they come in its order, not
    // bottom first, and there is no run to load early: the cells that read
    // that way on purpose (`vars`), and a containerd store to podman while
    // podman holds a layer (its load needs the held layers' lengths, which
    // the content store doesn't give).
    let bottom_first =
        vars.is_empty() && !(src_kind == Kind::Containerd && far_kind == Kind::Podman);
    let (_, log) = transfer_logged(e, &src, &dst, &big, "big\n", "dos::delta=debug");
    let early = log.contains("the engine applies layers 1 to 2 of 3 while the rest arrive");
    assert_eq!(
        early, bottom_first,
        "the bottom layers loaded first: {early}, expected {bottom_first}: {log}"
    );
    assert_no_partial_images(&dst.host, &identity(&src.host, &big).0);
}

/// No image of a segmented load of the image with `config` is left on
/// the engine (the cells share the engines: another's may be at work).
fn assert_no_partial_images(host: &str, config: &str) {
    let label = format!("label=dos.partial={config}");
    let left = docker(host, &["image", "ls", "-a", "-q", "--filter", &label]);
    assert!(
        left.trim().is_empty(),
        "partial images left on {host}: {left}"
    );
}

#[test]
fn classic_to_classic() {
    cell(Kind::Classic, Kind::Classic);
}

#[test]
fn classic_to_containerd() {
    cell(Kind::Classic, Kind::Containerd);
}

#[test]
fn classic_to_podman() {
    cell(Kind::Classic, Kind::Podman);
}

#[test]
fn containerd_to_classic() {
    cell(Kind::Containerd, Kind::Classic);
}

/// As root on the daemon's machine, the blobs come out of the containerd
/// content store; where dos may not read it, out of `docker save`: both
/// send the stored blobs as they are (the same image ID at both ends).
#[test]
fn containerd_to_containerd_from_the_content_store() {
    cell_with(
        Kind::Containerd,
        Kind::Containerd,
        &[],
        "read by the containerd content store;",
    );
}

#[test]
fn containerd_to_containerd_from_docker_save() {
    cell_with(
        Kind::Containerd,
        Kind::Containerd,
        &[("DOS_READ_STORE", "never")],
        "read by docker save;",
    );
}

/// Not reading the classic store (as a pusher that isn't root): layers come
/// out of `docker save`, or of the capture registry once the daemon knows
/// the image; an image repeating a layer goes through both too.
#[test]
fn classic_to_classic_without_reading_the_store() {
    cell_with(
        Kind::Classic,
        Kind::Classic,
        &[("DOS_READ_STORE", "never"), ("DOS_CAPTURE_PORT", "47123")],
        "",
    );
}

#[test]
fn containerd_to_podman() {
    cell(Kind::Containerd, Kind::Podman);
}

/// The registry relay (`--via registry`): the config and layers are the
/// source's, the IDs too where both ends name images the same way, the
/// image is whole on the far engine (its export works), and the relay's
/// names are gone from both ends. Docker 28.5's containerd store can end
/// such a pull without the blobs of layers it has unpacked already: the far
/// side gets the base first by `docker save | docker load` (from the
/// classic store: plain-tar blobs, while the registry serves gzip ones), so
/// that happens here; dos completes the image. Podman pulls through its
/// libpod API (its Docker-compatible pull wants TLS).
fn relay(src_kind: Kind, far_kind: Kind) {
    let e = need_env!();
    let (src, dst) = (source(e, src_kind), far(e, far_kind));
    let name = unique(&format!("r-{src_kind:?}-{far_kind:?}").to_lowercase());
    let (base, v1) = (format!("{name}-base:1"), format!("{name}:1"));
    build(&src.host, &base, &v1, fresh_seed(), 64 * 1024, "relayed\n");
    copy_image(&src.host, &dst.host, &base);
    let out = push(e, &src, &dst, &["--via", "registry"], &v1, "");
    let log = stderr(&out);
    assert!(out.status.success(), "dos push --via registry {v1}: {log}");
    assert!(log.contains("via registry"), "{log}");
    assert!(
        !log.contains("the far side failed: the far side failed"),
        "{log}"
    );
    let far_identity = if dst.kind == Kind::Podman {
        // Podman 4.3 can't export an image whose OCI manifest names Docker
        // layer media types (as Docker 28's builder writes them) to a
        // `docker save` archive; it names images by their config digest,
        // and reports the layers.
        let layers = docker(
            &dst.host,
            &["image", "inspect", "-f", "{{json .RootFS.Layers}}", &v1],
        );
        let layers: Vec<String> = serde_json::from_str(&layers).unwrap();
        (image_id(&dst.host, &v1).unwrap(), layers)
    } else {
        identity(&dst.host, &v1)
    };
    assert_eq!(far_identity, identity(&src.host, &v1));
    if src.kind.config_ids() == dst.kind.config_ids() {
        assert_eq!(image_id(&dst.host, &v1), image_id(&src.host, &v1));
    }
    assert_eq!(run(e, &dst, &v1), "relayed");
    assert_no_temporary_names(&src.host);
    assert_no_temporary_names(&dst.host);
}

#[test]
fn relay_containerd_to_classic() {
    relay(Kind::Containerd, Kind::Classic);
}

#[test]
fn relay_classic_to_containerd() {
    relay(Kind::Classic, Kind::Containerd);
}

#[test]
fn relay_containerd_to_containerd() {
    relay(Kind::Containerd, Kind::Containerd);
}

#[test]
fn relay_classic_to_podman() {
    relay(Kind::Classic, Kind::Podman);
}

#[test]
fn relay_containerd_to_podman() {
    relay(Kind::Containerd, Kind::Podman);
}
