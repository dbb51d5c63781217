//! The node's image store: a test image built here from Debian's busybox-static, loaded
//! with `nanokube image load` as a `docker save` archive and (converted by skopeo) as an
//! OCI image layout, pushed to a real registry (Debian's docker-registry on a loopback
//! port) and pulled back by tag and by digest; layers unpacked once with whiteouts as
//! overlayfs reads them; listed, removed, imported from the air-gap directory at start,
//! and reported in the Node's status.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{build_image, eventually, skopeo, start_registry, Server};

fn nanokube(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn images_load_pull_unpack_list_and_remove() {
    let mut s = Server::start();
    let data = s.data.to_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let (archive, diff_ids) = build_image(work.path(), "testbox:1.0");

    // docker save format, while the server runs.
    let (ok, out, err) = nanokube(&["image", "load", archive.to_str().unwrap(), "--data-dir", &data]);
    assert!(ok, "{err}");
    assert_eq!(out, "Loaded image: docker.io/library/testbox:1.0\n");
    let layer = |d: &str| s.data.join("content/layers/sha256").join(d.trim_start_matches("sha256:"));
    assert!(layer(&diff_ids[0]).join("bin/busybox").is_file());
    assert_eq!(std::fs::read_link(layer(&diff_ids[0]).join("bin/sh")).unwrap(), Path::new("busybox"));
    let whiteout = std::fs::symlink_metadata(layer(&diff_ids[1]).join("etc/old")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "a whiteout is a 0/0 character device");
    let opaque = Command::new("getfattr").args(["--only-values", "-n", "trusted.overlay.opaque"]).arg(layer(&diff_ids[1]).join("opt")).output();
    if let Ok(o) = opaque {
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout), "y");
        }
    }

    // OCI image layout, converted by skopeo, named by its annotation.
    let oci = work.path().join("oci.tar");
    skopeo(&["copy", &format!("docker-archive:{}", archive.display()), &format!("oci-archive:{}:docker.io/tools/ocibox:2", oci.display())]);
    let (ok, out, err) = nanokube(&["image", "load", oci.to_str().unwrap(), "--data-dir", &data]);
    assert!(ok, "{err}");
    assert_eq!(out, "Loaded image: docker.io/tools/ocibox:2\n");

    // Through a real registry on a loopback port (plain HTTP, as loopback allows).
    let registry = start_registry();
    let remote = format!("127.0.0.1:{}/tools/testbox:3", registry.port);
    skopeo(&["copy", "--dest-tls-verify=false", &format!("docker-archive:{}", archive.display()), &format!("docker://{remote}")]);
    let (ok, out, err) = nanokube(&["image", "pull", &remote, "--data-dir", &data]);
    assert!(ok, "{err}");
    assert!(out.starts_with("Image is up to date for sha256:"), "{out}");
    let ls = nanokube(&["image", "ls", "--data-dir", &data]).1;
    for want in ["docker.io/library/testbox", "docker.io/tools/ocibox", &format!("127.0.0.1:{}/tools/testbox", registry.port)] {
        assert!(ls.lines().any(|l| l.starts_with(want)), "{want} in\n{ls}");
    }
    assert!(ls.starts_with("IMAGE"), "{ls}");
    let store = nanokube_runtime::ImageStore::open(&s.data).unwrap();
    let pulled = store.resolve(&remote).unwrap();
    let by_digest = format!("127.0.0.1:{}/tools/testbox@{}", registry.port, pulled.manifest_digest);
    let (ok, _, err) = nanokube(&["image", "pull", &by_digest, "--data-dir", &data]);
    assert!(ok, "{err}");

    // A zstd-compressed image (skopeo compresses the layer with zstd into an OCI layout,
    // then pushes it to a registry of its own, so no gzip blob of the same layer is
    // reused): pulled and unpacked to the same layer, the diff ID being the tar's.
    let zstd_registry = start_registry();
    let zstd_layout = work.path().join("zstd-layout");
    skopeo(&["copy", "--dest-compress-format=zstd", &format!("docker-archive:{}", archive.display()), &format!("oci:{}:zstd", zstd_layout.display())]);
    let zstd_remote = format!("127.0.0.1:{}/tools/testbox:zstd", zstd_registry.port);
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:zstd", zstd_layout.display()), &format!("docker://{zstd_remote}")]);
    let (ok, _, err) = nanokube(&["image", "pull", &zstd_remote, "--data-dir", &data]);
    assert!(ok, "{err}");
    let zstd_image = store.resolve(&zstd_remote).unwrap();
    assert!(zstd_image.layers.iter().all(|l| l.media_type.ends_with("tar+zstd")), "{:?}", zstd_image.layers);
    assert_eq!(zstd_image.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(), diff_ids);
    let _ = nanokube(&["image", "rm", &zstd_remote, "--data-dir", &data]);

    // A missing image: the registry's error, naming the reference.
    let missing = format!("127.0.0.1:{}/tools/missing:1", registry.port);
    let (ok, _, err) = nanokube(&["image", "pull", &missing, "--data-dir", &data]);
    assert!(!ok);
    assert!(err.contains(&format!("failed to pull and unpack image \"{missing}\"")) && err.to_lowercase().contains("manifest unknown"), "{err}");

    // The Node lists its images.
    assert!(eventually(Duration::from_secs(20), || {
        let node = s.get_json("/api/v1/nodes").1["items"][0].clone();
        node["status"]["images"]
            .as_array()
            .is_some_and(|imgs| imgs.iter().any(|i| i["names"].as_array().unwrap().iter().any(|n| n == "docker.io/library/testbox:1.0")))
    }));

    // Removal keeps the layers other images still use.
    let (ok, out, _) = nanokube(&["image", "rm", "testbox:1.0", "--data-dir", &data]);
    assert!(ok);
    assert!(out.contains("Deleted: docker.io/library/testbox:1.0"), "{out}");
    assert!(layer(&diff_ids[0]).exists(), "still used by the other images");
    for name in ["docker.io/tools/ocibox:2", &remote, &by_digest] {
        let _ = nanokube(&["image", "rm", name, "--data-dir", &data]);
    }
    assert!(!layer(&diff_ids[0]).exists(), "no image uses it any more");
    let (ok, _, err) = nanokube(&["image", "rm", "testbox:1.0", "--data-dir", &data]);
    assert!(!ok && err.contains("not found"), "{err}");

    // The air-gap directory is imported at start.
    std::fs::create_dir_all(s.data.join("images")).unwrap();
    std::fs::copy(&archive, s.data.join("images/testbox.tar")).unwrap();
    s.stop();
    s.restart();
    assert!(nanokube(&["image", "ls", "--data-dir", &data]).1.contains("docker.io/library/testbox"));
}
