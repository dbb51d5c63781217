//! Running containers with `runc` (Debian's; a maintained OCI runtime, in its own process
//! so nothing forks the server's threads), its state kept under the data directory rather
//! than the host's `/run/runc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// runc, with its state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    /// The runc binary.
    pub binary: PathBuf,
    /// `--root`: where runc keeps container state.
    pub state: PathBuf,
}

/// What a container that ran to its end left.
#[derive(Debug, Clone)]
pub struct Exited {
    /// Its exit code (128 + signal when killed).
    pub code: i32,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Runc {
    /// runc from PATH (or `/usr/sbin/runc`), its state under `state`. `None` when there is no runc.
    pub fn find(state: &Path) -> Option<Runc> {
        Some(Runc { binary: crate::find_program("runc")?, state: state.to_path_buf() })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.state);
        c
    }

    /// Run the container in `bundle` as `id` to its end, its output captured.
    pub fn run(&self, bundle: &Path, id: &str) -> Result<Exited, String> {
        let out = self.command().arg("run").arg("--bundle").arg(bundle).arg(id).stdin(Stdio::null()).output().map_err(|e| format!("runc: {e}"))?;
        let code = out.status.code().unwrap_or(-1);
        Ok(Exited { code, stdout: out.stdout, stderr: out.stderr })
    }

    /// Remove what runc keeps of a container (killed first if it still runs).
    pub fn delete(&self, id: &str) -> Result<(), String> {
        let out = self.command().args(["delete", "--force", id]).output().map_err(|e| format!("runc: {e}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || err.contains("does not exist") {
            Ok(())
        } else {
            Err(format!("runc delete {id}: {}", err.trim()))
        }
    }

    /// Change a running container's cgroup limits in place (kubelet's
    /// `UpdateContainerResources`); what `limits` leaves unset stays as it is.
    pub fn update(&self, id: &str, limits: &crate::bundle::Limits) -> Result<(), String> {
        use std::io::Write;
        let mut resources = serde_json::Map::new();
        if let Some(m) = limits.memory {
            resources.insert("memory".into(), serde_json::json!({"limit": m}));
        }
        let mut cpu = serde_json::Map::new();
        if let Some(s) = limits.cpu_shares {
            cpu.insert("shares".into(), s.into());
        }
        if let Some(q) = limits.cpu_quota {
            cpu.insert("quota".into(), q.into());
            cpu.insert("period".into(), 100_000.into());
        }
        if !cpu.is_empty() {
            resources.insert("cpu".into(), cpu.into());
        }
        let mut child = self
            .command()
            .args(["update", "--resources", "-", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("runc: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(serde_json::Value::Object(resources).to_string().as_bytes()).map_err(|e| format!("runc update {id}: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("runc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("runc update {id}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Send `signal` (a name runc knows: `TERM`, `KILL`, …) to the container's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), String> {
        let out = self.command().args(["kill", id, signal]).output().map_err(|e| format!("runc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("runc kill {id} {signal}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Run `argv` inside the running container (exec probes and hooks), bounded by
    /// `timeout`: its exit code and combined output (at most 10 KiB kept, as kubelet keeps).
    pub fn exec(&self, id: &str, argv: &[String], timeout: std::time::Duration) -> Result<(i32, Vec<u8>), String> {
        use std::io::Read;
        let mut child = self
            .command()
            .args(["exec", id])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("runc: {e}"))?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        // Both outputs are drained to their end (a process must never block on a full
        // pipe), keeping the first 10 KiB.
        fn drain(r: Option<&mut dyn Read>, keep: &mut Vec<u8>) {
            let Some(r) = r else { return };
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = (10 * 1024usize).saturating_sub(keep.len());
                keep.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        let err_reader = std::thread::spawn(move || {
            let mut kept = Vec::new();
            drain(stderr.as_mut().map(|s| s as &mut dyn Read), &mut kept);
            kept
        });
        let reader = std::thread::spawn(move || {
            let mut kept = Vec::new();
            drain(stdout.as_mut().map(|s| s as &mut dyn Read), &mut kept);
            kept.extend(err_reader.join().unwrap_or_default());
            kept.truncate(10 * 1024);
            kept
        });
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let output = reader.join().unwrap_or_default();
                    return Ok((status.code().unwrap_or(128), output));
                }
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("command timed out after {}s", timeout.as_secs_f64()));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
