//! A pod's shared process namespace (`shareProcessNamespace: true`): a PID namespace
//! needs a living PID 1, so such a pod gets the one process the others do without,
//! kubelet's "pause": `nanokube pause` (a re-exec of the binary) makes the namespace and
//! forks its init, which only reaps orphans until it is killed. Its host PID is kept in
//! `<pod dir>/pause.pid`; it runs in its own session, so it outlives a crash of the
//! server like the shims do, and is found again by its PID file and command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn pid_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("pause.pid")
}

/// `nanokube pause --pid-file F [--userns U]`: runs before any thread exists. Returns the
/// exit code of the parent; the child never returns. With `U` (a pod with `hostUsers:
/// false`) the namespace is made inside the pod's user namespace, so the pod's
/// containers, which join that first, may join it too.
pub fn main(pid_file: &Path, userns: Option<&Path>) -> i32 {
    if let Some(u) = userns {
        let file = match std::fs::File::open(u) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{}: {e}", u.display());
                return 1;
            }
        };
        // SAFETY: setns(2) of this single-threaded process into a namespace file we hold.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWUSER) } != 0 {
            eprintln!("setns(user): {}", std::io::Error::last_os_error());
            return 1;
        }
    }
    // SAFETY: unshare(2) in this still single-threaded process; the next child made is
    // PID 1 of the new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        eprintln!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error());
        return 1;
    }
    // SAFETY: fork(2) in a single-threaded process; the child only calls
    // async-signal-safe functions.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("fork: {}", std::io::Error::last_os_error());
            1
        }
        0 => init(),
        child => {
            let tmp = pid_file.with_extension("tmp");
            match std::fs::write(&tmp, child.to_string()).and_then(|()| std::fs::rename(&tmp, pid_file)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{}: {e}", pid_file.display());
                    // SAFETY: kill(2) of the child just made.
                    unsafe { libc::kill(child, libc::SIGKILL) };
                    1
                }
            }
        }
    }
}

/// PID 1 of the pod: wait for SIGCHLD, reap, forever.
fn init() -> ! {
    // SAFETY: plain libc calls on local, initialized signal sets; prctl with a static
    // NUL-terminated name.
    unsafe {
        // Nothing is written from here on; the spawner waits for its pipe to close.
        for fd in 0..3 {
            libc::close(fd);
        }
        libc::prctl(libc::PR_SET_NAME, c"pause".as_ptr() as libc::c_ulong, 0, 0, 0);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            let mut status = 0;
            while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {}
        }
    }
}

/// The pod's pause process, if it is alive (its PID file, checked against the process's
/// command line so a reused PID is never taken for it).
pub fn pid(pod_dir: &Path) -> Option<i32> {
    let file = pid_file(pod_dir);
    let pid: i32 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    (cmdline.contains(" pause ") && cmdline.contains(&*file.to_string_lossy())).then_some(pid)
}

/// The pod's pause process, started (by `binary pause`) unless it runs already.
pub fn ensure(binary: &Path, pod_dir: &Path) -> Result<i32, String> {
    if let Some(pid) = pid(pod_dir) {
        return Ok(pid);
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(binary);
    cmd.arg("pause").arg("--pid-file").arg(pid_file(pod_dir));
    let userns = pod_dir.join("ns-user");
    if crate::netns::is_namespace(&userns) {
        cmd.arg("--userns").arg(userns);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe, as the child side of fork requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| format!("starting {} pause: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!("the pod's process namespace: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    pid(pod_dir).ok_or_else(|| "the pod's pause process is gone".to_string())
}

/// Kill the pod's pause process (and with it whatever still runs in the namespace).
pub fn stop(pod_dir: &Path) {
    if let Some(pid) = pid(pod_dir) {
        // SAFETY: kill(2) of a process checked to be this pod's pause.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(pid_file(pod_dir));
}
