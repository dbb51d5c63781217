//! Real containers from the image store, as the pod workers will make them: a test image
//! (busybox-static, two layers with a whiteout and an opaque directory) loaded into a
//! store, mounted as an overlay, its bundle written from oci-spec's defaults with
//! Kubernetes' command, args and `$(VAR)` expansion over the image's entrypoint, run by
//! runc (Debian's) in its own namespaces; the exit code, the output, and nothing left
//! behind (mounts, runc state) after.

mod common;

use std::path::Path;

use nanokube_runtime::{bundle, command, rootfs, runc::Runc, ImageStore};

fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy().to_string();
    text.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d))).map(String::from).collect()
}

#[test]
fn a_container_runs_from_the_store_with_kubernetes_command_semantics() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap();
    let (archive, _) = common::build_image(work.path(), "testbox:1.0");
    assert_eq!(nanokube_runtime::archive::load(&store, &archive).unwrap(), ["docker.io/library/testbox:1.0"]);
    let image = store.resolve("testbox:1.0").unwrap();
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&image.id).unwrap()).unwrap();
    let image_env: Vec<String> = config["config"]["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    let cmd: Vec<String> = config["config"]["Cmd"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    let runc = Runc::find(&data.join("runc")).expect("runc (the test command installs Debian's)");

    let run = |id: &str, command_: &[&str], args: &[&str], env: &[(&str, &str)]| {
        let dir = data.join("containers").join(id);
        let root = rootfs::mount(&store, &image, &dir).unwrap();
        let env = command::environment(&image_env, &env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let argv = command::argv(&s(command_), &s(args), &[], &cmd, &env);
        let cfg = bundle::ContainerConfig {
            argv,
            env,
            hostname: "pod-a".into(),
            allow_privilege_escalation: true,
            cgroups_path: format!("/nanokube-test-{}/{id}", std::process::id()),
            ..Default::default()
        };
        bundle::write(&dir, &root, &cfg).unwrap();
        let exited = runc.run(&dir, id);
        runc.delete(id).unwrap();
        rootfs::unmount(&root).unwrap();
        exited.unwrap()
    };

    // command + args with $(VAR) expansion; the layers as an overlay: the whiteout hides
    // /etc/old, the opaque /opt shows only the upper layer's file; the pod's hostname; PID 1.
    // (`$$` is Kubernetes' escape for `$`: the shell's `$$` is written `$$$$`.)
    let script = "echo $(GREETING) $NAME; ls /etc; ls /opt; hostname; echo pid $$$$; exit 3";
    let out = run("c1", &["sh", "-c"], &[script], &[("NAME", "world"), ("GREETING", "hello")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.code, 3, "exit code: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "hello world\nb\npod-a\npid 1\n", "{}", String::from_utf8_lossy(&out.stderr));

    // No command: the image's Cmd (`sh`) with args replacing it; env from the image.
    let out = run("c2", &[], &[], &[]);
    assert_eq!(out.code, 0, "sh with no input exits 0");
    let out = run("c3", &["sh", "-c", "echo $PATH"], &[], &[("PATH", "/sbin:$(PATH)")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/sbin:/bin\n");

    // Nothing is left mounted, runc keeps no state, and the containers' cgroups are gone;
    // the test's parent cgroup is removed (runc leaves parents in place).
    for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().filter_map(Result::ok) {
        let parent = controller.path().join(format!("nanokube-test-{}", std::process::id()));
        if parent.exists() {
            let left: Vec<_> = std::fs::read_dir(&parent).unwrap().filter_map(Result::ok).filter(|e| e.path().is_dir()).map(|e| e.path()).collect();
            assert!(left.is_empty(), "container cgroups left: {left:?}");
            std::fs::remove_dir(&parent).unwrap();
        }
    }
    assert!(mounts_under(work.path()).is_empty(), "{:?}", mounts_under(work.path()));
    let state = std::fs::read_dir(data.join("runc")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(state, 0, "runc state left behind");
}
