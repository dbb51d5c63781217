//! Real etcd members on loopback ports, started from the `etcd` binary (Debian's
//! `etcd-server`), for tests and benchmarks of the etcd backend. Each member has its own
//! data directory; dropping the handle kills the members it started (by PID) and removes
//! their data.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member of a local etcd cluster.
pub struct Member {
    /// Member name (`m0`, `m1`, …).
    pub name: String,
    /// Client URL (`http://127.0.0.1:<port>`).
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// A local etcd cluster of one or more members.
pub struct LocalEtcd {
    /// The members, in order.
    pub members: Vec<Member>,
    initial_cluster: String,
    _root: tempdir::TempRoot,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// Start a cluster of `size` members and wait until it serves.
    pub fn start(size: usize) -> Result<Self, String> {
        if Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Err("the etcd binary is not installed (apt-get install etcd-server; scripts/test.sh does)".into());
        }
        let root = tempdir::TempRoot::new().map_err(|e| format!("temporary directory: {e}"))?;
        let mut members = Vec::new();
        for i in 0..size.max(1) {
            let client = free_port().map_err(|e| e.to_string())?;
            let peer = free_port().map_err(|e| e.to_string())?;
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{client}"),
                peer_url: format!("http://127.0.0.1:{peer}"),
                data_dir: root.path().join(format!("m{i}")),
                child: None,
            });
        }
        let initial_cluster = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut cluster = LocalEtcd { members, initial_cluster, _root: root };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let initial_cluster = self.initial_cluster.clone();
        let m = &mut self.members[i];
        let state = if m.data_dir.exists() { "existing" } else { "new" };
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", state, "--initial-cluster-token", "nanokube-test"])
            .args(["--logger", "zap", "--log-level", "error"])
            // Faster elections than the defaults, for loopback members.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting etcd: {e}"))?;
        m.child = Some(child);
        Ok(())
    }

    /// Wait until every running member accepts connections.
    pub fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let addr = m.client_url.trim_start_matches("http://");
            loop {
                if health(addr) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("etcd member {} did not become healthy at {}", m.name, m.client_url));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kill member `i` with SIGKILL (its data stays, so it can be started again).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start member `i` again (after [`LocalEtcd::kill`]) and wait until it serves.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.spawn(i)?;
        self.wait_ready(Duration::from_secs(30))
    }

    /// Start every killed member again, then wait until all serve (a lone member of a
    /// cluster that lost its quorum cannot be healthy until the others are back).
    pub fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        self.wait_ready(Duration::from_secs(30))
    }
}

/// Whether etcd's `/health` at `addr` answers healthy (plain HTTP/1.0 over loopback).
fn health(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory under the system's temporary directory, removed on drop.
    pub struct TempRoot(PathBuf);

    impl TempRoot {
        pub fn new() -> std::io::Result<Self> {
            let p = std::env::temp_dir().join(format!("nanokube-etcd-{}-{}", std::process::id(), fastrand_suffix()));
            std::fs::create_dir_all(&p)?;
            Ok(TempRoot(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fastrand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        h.finish()
    }
}
