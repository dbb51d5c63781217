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
        let candidates = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("runc")).collect::<Vec<_>>()).unwrap_or_default();
        let binary = candidates.into_iter().chain([PathBuf::from("/usr/sbin/runc"), PathBuf::from("/usr/bin/runc")]).find(|p| p.is_file())?;
        Some(Runc { binary, state: state.to_path_buf() })
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
}
