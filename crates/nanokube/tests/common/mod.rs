//! Test harness: the real `nanokube` binary on a free loopback port with a temporary
//! data directory, and the real `kubectl` and `curl` pointed at it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `nanokube server` process.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    extra_args: Vec<String>,
    /// With `NANOKUBE_TEST_ETCD` set, the etcd this server stores its cluster in (the
    /// suites that run a second time on etcd); dropped after the server.
    etcd: Option<nanokube_store::local_etcd::LocalEtcd>,
}

/// `NANOKUBE_TEST_ETCD=1` (scripts/test.sh sets it for a second run of the kubectl
/// suites): servers that name no store of their own get a fresh etcd.
fn etcd_for(extra: &mut Vec<String>) -> Option<nanokube_store::local_etcd::LocalEtcd> {
    if std::env::var_os("NANOKUBE_TEST_ETCD").is_none() || extra.iter().any(|a| a.starts_with("--etcd-servers") || a == "--in-memory") {
        return None;
    }
    let etcd = nanokube_store::local_etcd::LocalEtcd::start(1).expect("etcd for NANOKUBE_TEST_ETCD");
    extra.push(format!("--etcd-servers={}", etcd.endpoints().join(",")));
    Some(etcd)
}

/// Where the versioned kubectl binaries live (`kubectl.1.27` …).
pub fn kubectl_path(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/lib/google-cloud-sdk/bin", "/usr/local/bin", "/usr/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found on PATH or in /usr/lib/google-cloud-sdk/bin");
}

fn spawn(data: &Path, port: u16, extra: &[String]) -> (Child, String, u16) {
    spawn_logging(data, port, extra, Stdio::inherit())
}

/// Public registries the tests' servers must never reach: their pulls go to a closed
/// loopback port instead (ErrImagePull at once), unless a test names its own mirror.
pub const NO_PUBLIC_PULLS: &[&str] = &[
    "--registry-mirror=docker.io=127.0.0.1:1",
    "--registry-mirror=registry.k8s.io=127.0.0.1:1",
    "--registry-mirror=quay.io=127.0.0.1:1",
    "--registry-mirror=ghcr.io=127.0.0.1:1",
    "--registry-mirror=gcr.io=127.0.0.1:1",
];

fn spawn_logging(data: &Path, port: u16, extra: &[String], stderr: Stdio) -> (Child, String, u16) {
    let own_mirrors = extra.iter().any(|a| a.starts_with("--registry-mirror"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args(["server", "--secure-port", &port.to_string(), "--merge-kubeconfig=false", "--data-dir"])
        .arg(data)
        .args(if own_mirrors { &[][..] } else { NO_PUBLIC_PULLS })
        // Servers run side by side: each node's kubelet API on a port of its own.
        .args(if extra.iter().any(|a| a.starts_with("--kubelet-port")) { None } else { Some("--kubelet-port=0") })
        // Servers run side by side: the host's Service addresses and DNS address are
        // opened only by the tests that ask (with a Service range of their own), and no
        // test asks a resolver off this machine.
        .args(if extra.iter().any(|a| a.starts_with("--service-proxy")) { None } else { Some("--service-proxy=false") })
        .args(if extra.iter().any(|a| a.starts_with("--cluster-dns-upstream")) { None } else { Some("--cluster-dns-upstream=none") })
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn nanokube");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("nanokube is ready at ") {
                let url = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("server did not become ready");
    let port = url.rsplit(':').next().unwrap().parse().unwrap();
    (child, url, port)
}

/// Start a second `nanokube server` on `data` that must refuse to start: its stderr.
pub fn server_refuses(data: &Path, why: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args(["server", "--secure-port", "0", "--merge-kubeconfig=false", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{why}: started anyway");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Server {
    /// Start on a free port with a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Start with extra `nanokube server` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let etcd = etcd_for(&mut extra);
        let (child, url, port) = spawn(&data, 0, &extra);
        Server { child, url, port, dir, data, extra_args: extra, etcd }
    }

    /// Start with the data directory at `data` (which need not be inside the server's
    /// temporary directory) and stderr written to `log` (e.g. `/dev/full`).
    pub fn start_logging_to(data: &Path, log: &Path, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let etcd = etcd_for(&mut extra);
        let stderr = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        let (child, url, port) = spawn_logging(data, 0, &extra, Stdio::from(stderr));
        Server { child, url, port, dir, data: data.to_path_buf(), extra_args: extra, etcd }
    }

    /// Kill with SIGKILL (a crash) and wait for the process to end.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop with SIGTERM and wait.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        // Pods get up to 10 s to stop.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    /// Start again on the same data directory and port.
    pub fn restart(&mut self) {
        let (child, url, port) = spawn(&self.data, self.port, &self.extra_args);
        self.child = child;
        self.url = url;
        self.port = port;
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }

    /// Run a kubectl binary (e.g. `kubectl.1.27`) with the admin kubeconfig.
    pub fn kubectl_bin(&self, bin: &str, args: &[&str]) -> Output {
        let home = self.kubectl_home(bin);
        let child = Command::new(kubectl_path(bin))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        output_within(child, KUBECTL_DEADLINE, &format!("{bin} {args:?}"))
    }

    /// The HOME a kubectl binary runs with (its cache of discovery, apart per version).
    fn kubectl_home(&self, bin: &str) -> PathBuf {
        let home = self.dir.path().join(format!("home-{bin}"));
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    /// Run `kubectl` and return its output.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_bin("kubectl", args)
    }

    /// Run `kubectl`, assert success and return stdout.
    pub fn k(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run `kubectl edit <what>` with an EDITOR script that applies the `sed` expression
    /// to the file kubectl hands it.
    pub fn kubectl_edit(&self, what: &[&str], sed: &str) -> Output {
        let editor = self.dir.path().join("editor.sh");
        std::fs::write(&editor, format!("#!/bin/sh\nsed -i '{sed}' \"$1\"\n")).unwrap();
        std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let home = self.dir.path().join("home-edit");
        std::fs::create_dir_all(&home).unwrap();
        let child = Command::new(kubectl_path("kubectl"))
            .arg("edit")
            .args(what)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &home)
            .env("EDITOR", &editor)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        output_within(child, KUBECTL_DEADLINE, &format!("kubectl edit {what:?}"))
    }

    /// Run `kubectl` with a manifest on stdin (`-f -`).
    pub fn k_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_input("kubectl", args, stdin.as_bytes())
    }

    /// Start `cmd` (kubectl `bin`, or what runs it) as the admin, every stream piped.
    fn piped(&self, cmd: &mut Command, bin: &str) -> Child {
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.kubectl_home(bin))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Run a kubectl binary with `input` on its stdin, written while it runs.
    pub fn kubectl_input(&self, bin: &str, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self.piped(Command::new(kubectl_path(bin)).args(args), bin);
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = output_within(child, KUBECTL_DEADLINE, &format!("{bin} {args:?}"));
        let _ = writer.join();
        out
    }

    /// Run a kubectl binary on a pseudo-terminal of 91 columns and 33 rows (`script`),
    /// typing `input` into it once `ready` shows in its output (or after 20 s); the
    /// terminal's output, and kubectl's exit code.
    pub fn kubectl_on_terminal(&self, bin: &str, args: &str, ready: &str, input: &str) -> (String, Option<i32>) {
        use std::io::{Read, Write};
        let line = format!("stty cols 91 rows 33; exec {} {args}", kubectl_path(bin).display());
        let mut child = self.piped(Command::new("script").args(["-qefc", &line, "/dev/null"]), bin);
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&seen).contains(ready) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.extend(chunk),
                Err(_) => break,
            }
        }
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
        // script ends when kubectl does (its stdin stays open until then); a kubectl still
        // there after a minute is ended, and the test sees no exit code.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > until {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(stdin);
        let _ = reader.join();
        seen.extend(rx.try_iter().flatten());
        (String::from_utf8_lossy(&seen).into_owned(), status.code())
    }

    /// A `curl` command with the admin's client certificate and the cluster CA, for
    /// callers that need its other flags (headers, streaming).
    pub fn admin_curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.arg("--cacert").arg(self.data.join("ca.crt")).arg("--cert").arg(self.data.join("client.crt")).arg("--key").arg(self.data.join("client.key"));
        cmd
    }

    /// `curl` as the admin (client certificate, cluster CA). Returns (HTTP code, body).
    pub fn curl(&self, method: &str, path: &str, content_type: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
        self.curl_as(None, method, path, content_type, body)
    }

    /// `curl` over HTTP/1.1 with a bearer token, or with no credentials at all for
    /// `Some("")`; `None` is the admin's client certificate. Returns (HTTP code, body).
    pub fn curl_as(&self, token: Option<&str>, method: &str, path: &str, content_type: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
        let d = &self.data;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--cacert"]).arg(d.join("ca.crt"));
        match token {
            None => {
                cmd.arg("--cert").arg(d.join("client.crt")).arg("--key").arg(d.join("client.key"));
            }
            Some("") => {}
            Some(t) => {
                cmd.args(["--http1.1", "-H", &format!("Authorization: Bearer {t}")]);
            }
        }
        if let Some(ct) = content_type {
            cmd.args(["-H", &format!("Content-Type: {ct}")]);
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(format!("{}{}", self.url, path)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(b) = body {
                stdin.write_all(b).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `curl` GET returning parsed JSON and the code.
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.curl("GET", path, None, None);
        (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server whose node runs pods stops them (a clean stop leaves no process, mount
        // or cgroup); one without is simply killed.
        let has_pods = std::fs::read_dir(self.data.join("pods")).is_ok_and(|mut d| d.next().is_some());
        if has_pods && matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        } else {
            self.kill9();
        }
        // The server is gone before its etcd.
        drop(self.etcd.take());
    }
}

/// How long one kubectl call may take before the test ends it and fails. A call can hang
/// for good: `kubectl delete` waits (for a week) for a DELETED event its informer never
/// sees when a controller recreates the object under the same name between its list and
/// its watch. A test must fail then, not hold CI.
pub const KUBECTL_DEADLINE: Duration = Duration::from_secs(180);

/// Wait for `child` (its stdout and stderr piped) and collect its output; past
/// `deadline` it is killed and the test fails, naming `what`.
pub fn output_within(child: Child, deadline: Duration, what: &str) -> Output {
    let pid = child.id();
    let (finished, until) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if until.recv_timeout(deadline) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on our own child. Its waiter has not returned (it signals
            // first), so the pid is still the child's unless it exited this very instant.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("wait for a child process");
    let _ = finished.send(());
    let killed = watchdog.join().unwrap_or(false);
    assert!(
        !killed,
        "{what} did not finish within {deadline:?} and was killed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Column headers and rows of kubectl's table output.
pub fn table(out: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or("");
    // Columns start where the header has a word after two or more spaces (or at 0).
    let mut starts = vec![0];
    let b = header.as_bytes();
    for i in 1..b.len() {
        if b[i] != b' ' && b[i - 1] == b' ' && i >= 2 && b[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let cut = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(n, &s)| {
                let e = starts.get(n + 1).copied().unwrap_or(usize::MAX);
                let s = s.min(line.len());
                let e = e.min(line.len());
                line[s..e].trim().to_string()
            })
            .collect()
    };
    let headers = cut(header);
    let rows = lines.map(cut).collect();
    (headers, rows)
}

/// A CA and a serving certificate it signed for `sans` (DNS names or IPs): (CA PEM,
/// certificate PEM, key PEM), for the test servers the cluster calls (webhooks,
/// aggregated API servers).
#[allow(dead_code)]
pub fn serving_cert(sans: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "test-server-ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A test server from `tests/support/<script>` run by python3 with `args`, and the port
/// it printed once listening. The caller kills it.
#[allow(dead_code)]
pub fn spawn_python_server(script: &str, args: &[&std::ffi::OsStr]) -> (std::process::Child, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(script);
    let mut child = Command::new("python3").arg(path).args(args).stdout(Stdio::piped()).spawn().expect("python3 runs the test server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("{script} prints its port, got {line:?}"));
    (child, port)
}

/// A test server process (webhook, aggregated API server, registry), killed and reaped
/// when dropped.
#[allow(dead_code)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(dead_code)]
/// A layer tar of `files` (path, contents or `None` for a directory, mode).
pub fn layer(files: &[(&str, Option<&[u8]>, u32)], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    for (path, target) in symlinks {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

#[allow(dead_code)]
/// A `docker save` archive of a busybox image named `tag`, two layers (the second
/// deletes `/etc/old` and makes `/opt` opaque); its layer diff IDs.
pub fn build_image(dir: &std::path::Path, tag: &str) -> (std::path::PathBuf, Vec<String>) {
    build_image_with(dir, tag, &[])
}

#[allow(dead_code)]
/// The files of host programs for an image: each program at its path, and every shared
/// library `ldd` names (and the ELF interpreter) at theirs, symlinks read through.
pub fn host_program_files(programs: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<String> = programs.iter().map(|p| p.to_string()).collect();
    for p in programs {
        let out = Command::new("ldd").arg(p).output().expect("ldd");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
                None => line.split_whitespace().next().unwrap_or(""),
            };
            if path.starts_with('/') && !paths.iter().any(|x| x == path) {
                paths.push(path.to_string());
            }
        }
    }
    paths.into_iter().map(|p| (p.trim_start_matches('/').to_string(), std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}")))).collect()
}

#[allow(dead_code)]
/// As [`build_image`], with a third layer holding `extra` files (path, contents) with
/// mode 0755, and `/usr/bin` on the image's PATH.
pub fn build_image_with(dir: &std::path::Path, tag: &str, extra: &[(String, Vec<u8>)]) -> (std::path::PathBuf, Vec<String>) {
    let busybox = std::fs::read("/bin/busybox").expect("Debian's busybox-static (the test command installs it)");
    // Every applet linked in /bin, as the busybox image has them.
    let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox").map(|a| format!("bin/{a}")).collect();
    let l1 = layer(
        &[
            ("bin/", None, 0o755),
            ("bin/busybox", Some(&busybox), 0o755),
            ("etc/", None, 0o755),
            ("etc/old", Some(b"old\n"), 0o644),
            ("opt/", None, 0o755),
            ("opt/a", Some(b"a"), 0o644),
            ("tmp/", None, 0o1777),
        ],
        &applets.iter().map(|a| (a.as_str(), "busybox")).collect::<Vec<_>>(),
    );
    let l2 = layer(&[("etc/.wh.old", Some(b""), 0o644), ("opt/.wh..wh..opq", Some(b""), 0o644), ("opt/b", Some(b"b"), 0o644)], &[]);
    let mut layers = vec![l1, l2];
    let mut path_env = "PATH=/bin";
    if !extra.is_empty() {
        // Each file's directories first, then the files.
        let mut dirs: Vec<String> = Vec::new();
        for (path, _) in extra {
            let mut acc = String::new();
            for part in path.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d.to_vec()).unwrap_or_default() {
                acc.push_str(part);
                acc.push('/');
                if !dirs.contains(&acc) && acc != "bin/" {
                    dirs.push(acc.clone());
                }
            }
        }
        let mut files: Vec<(&str, Option<&[u8]>, u32)> = dirs.iter().map(|d| (d.as_str(), None, 0o755)).collect();
        files.extend(extra.iter().map(|(p, d)| (p.as_str(), Some(d.as_slice()), 0o755)));
        layers.push(layer(&files, &[]));
        path_env = "PATH=/usr/bin:/bin";
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| nanokube_runtime::store::sha256(l)).collect();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Env": [path_env]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let names: Vec<String> = (1..=layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": names}]);
    let mut b = tar::Builder::new(Vec::new());
    let mut entries =
        vec![("manifest.json".to_string(), serde_json::to_vec(&manifest).unwrap()), ("config.json".to_string(), serde_json::to_vec(&config).unwrap())];
    entries.extend(names.into_iter().zip(layers));
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    let path = dir.join(format!("{}.tar", tag.replace([':', '/'], "_")));
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    (path, diff_ids)
}

#[allow(dead_code)]
/// Load the image archive at `archive` into `server`'s node.
pub fn load_image(server: &Server, archive: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["image", "load"]).arg(archive).arg("--data-dir").arg(&server.data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A server with the test image `testbox:1.0` (from [`build_image`]) loaded.
pub fn server_with_image() -> Server {
    server_with_image_and(&[])
}

/// As [`server_with_image`], with extra `nanokube server` flags.
pub fn server_with_image_and(extra: &[&str]) -> Server {
    let s = Server::start_with(extra);
    let work = s.dir.path().join("image");
    std::fs::create_dir_all(&work).unwrap();
    let (archive, _) = build_image(&work, "testbox:1.0");
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["image", "load"]).arg(&archive).arg("--data-dir").arg(&s.data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s
}

/// A real registry (Debian's docker-registry) on a free loopback port, for as long as
/// this lives.
pub struct Registry {
    _child: KillOnDrop,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
/// Start a registry with its storage in a temporary directory.
pub fn start_registry() -> Registry {
    start_registry_with(None)
}

#[allow(dead_code)]
/// Start a registry that requires `user:password` (htpasswd, bcrypt made by Python's
/// `crypt`) when given.
pub fn start_registry_with(credentials: Option<(&str, &str)>) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.path().join("config.yml");
    let data = dir.path().join("data");
    let mut text =
        format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", data.display());
    if let Some((user, password)) = credentials {
        let script = "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))";
        let out = Command::new("python3").args(["-W", "ignore", "-c", script, password]).output().unwrap();
        let hash = String::from_utf8(out.stdout).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).unwrap();
        text += &format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", htpasswd.display());
    }
    std::fs::write(&cfg, text).unwrap();
    let child =
        Command::new("docker-registry").arg("serve").arg(&cfg).stderr(Stdio::null()).spawn().expect("Debian's docker-registry (the test command installs it)");
    assert!(eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    Registry { _child: KillOnDrop(child), port, _dir: dir }
}

#[allow(dead_code)]
/// Run skopeo (Debian's), asserting success.
pub fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(["--insecure-policy"]).args(args).output().expect("skopeo (the test command installs it)");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// POST a ConfigMap `name` (data `k: name`) to `url` with curl, as the admin whose
/// certificates are in `data`, giving up after `max_secs`: the HTTP status (0: no answer).
pub fn post_configmap(data: &Path, url: &str, name: &str, max_secs: u32) -> u16 {
    let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"k":"{name}"}}}}"#);
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            &max_secs.to_string(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ])
        .arg("--cacert")
        .arg(data.join("ca.crt"))
        .arg("--cert")
        .arg(data.join("client.crt"))
        .arg("--key")
        .arg(data.join("client.key"))
        .arg(format!("{url}/api/v1/namespaces/default/configmaps"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The pod `name` in `default`, as the admin reads it.
pub fn pod(s: &Server, name: &str) -> serde_json::Value {
    s.get_json(&format!("/api/v1/namespaces/default/pods/{name}")).1
}

/// Read the pod `name` in `default` until `f` holds (30 s), failing with `what` and the
/// status last seen.
pub fn wait_for(s: &Server, name: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for_within(s, name, what, Duration::from_secs(30), f)
}

/// As [`wait_for`], within `timeout`.
pub fn wait_for_within(s: &Server, name: &str, what: &str, timeout: Duration, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = eventually(timeout, || {
        last = pod(s, name);
        f(&last)
    });
    assert!(ok, "{name}: waited for {what}; last seen: {}", serde_json::to_string_pretty(&last["status"]).unwrap_or_default());
    last
}
