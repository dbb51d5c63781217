//! The container shim: one small process per container (what `containerd-shim-runc`
//! and conmon are), a re-exec of the nanokube binary (`nanokube shim …`) so that nothing
//! forks the server's threads.
//!
//! It makes itself the reaper of the container (`PR_SET_CHILD_SUBREAPER`), starts it
//! with `runc run --detach`, tells the agent the container's PID on its stdout, then copies the
//! container's stdout and stderr into the CRI log file, waits for the container's end and
//! leaves what happened in `exit.json` beside the bundle. It also keeps the container's
//! stdin (a pipe, or the terminal runc hands over) and lets clients attach to its streams
//! ([`crate::attach`]). It lives in its own session, so
//! it outlives the server (a `kill -9` of nanokube leaves containers running, and the next
//! start adopts them by reading these files).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::attach;
use crate::cri_log::{self, LogWriter, Stream};

/// The console socket runc dials (relative: runc resolves it in the bundle).
const CONSOLE_SOCKET: &str = "console.sock";

/// What the shim is told.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state directory (`--root`).
    pub root: PathBuf,
    /// The bundle (holds `config.json`; the shim writes `exit.json` here).
    pub bundle: PathBuf,
    /// The container's ID.
    pub id: String,
    /// The CRI log file.
    pub log: PathBuf,
    /// The container keeps stdin open for attaching clients (`stdin: true`).
    pub stdin: bool,
    /// Its stdin closes once the first attached client's stdin ends (`stdinOnce`).
    pub stdin_once: bool,
    /// It runs on a terminal (`tty: true`; `config.json` says `terminal: true`).
    pub tty: bool,
}

/// What the shim says once the container started (or failed to).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// The container's init process (host PID), when it started.
    pub pid: Option<i32>,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// Why it did not start.
    pub error: Option<String>,
}

/// How a container ended (`exit.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit code (128 + signal when killed by one, as the CRI reports).
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it started (RFC 3339), if it did.
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// `OOMKilled` when the memory limit killed it; `StartError` when it never ran.
    pub reason: Option<String>,
    /// What went wrong, when it never ran.
    pub message: Option<String>,
}

/// The `exit.json` of a bundle, once the container ended.
pub fn read_exit(bundle: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(bundle.join("exit.json")).ok()?).ok()
}

fn now() -> String {
    crate::cri_log::timestamp(time::OffsetDateTime::now_utc())
}

fn write_exit(bundle: &Path, record: &ExitRecord) {
    let tmp = bundle.join("exit.json.tmp");
    if let Ok(bytes) = serde_json::to_vec(record) {
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, bundle.join("exit.json"));
        }
    }
}

/// runc's last error from its JSON log (`{"level":"error","msg":…}`).
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(String::from))
}

fn report(started: &Started) {
    let mut out = std::io::stdout();
    let _ = serde_json::to_writer(&mut out, started);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The cgroup's count of OOM kills (v1 `memory.oom_control`, v2 `memory.events`).
fn oom_kills(cgroup: &str) -> u64 {
    let rel = cgroup.trim_start_matches('/');
    let read = |p: PathBuf, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(p).ok()?;
        text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
    };
    read(Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control"), "oom_kill ")
        .or_else(|| read(Path::new("/sys/fs/cgroup").join(rel).join("memory.events"), "oom_kill "))
        .or_else(|| read(Path::new("/sys/fs/cgroup/unified").join(rel).join("memory.events"), "oom_kill "))
        .unwrap_or(0)
}

/// Run the shim to the container's end; the process's exit code.
pub fn main(args: ShimArgs) -> i32 {
    // The shim must not die with the terminal or the server that started it.
    // SAFETY: prctl with an integer argument; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let fail = |message: String| -> i32 {
        report(&Started { pid: None, started_at: None, error: Some(message.clone()) });
        write_exit(
            &args.bundle,
            &ExitRecord { exit_code: 128, signal: None, started_at: None, finished_at: now(), reason: Some("StartError".into()), message: Some(message) },
        );
        1
    };
    let cgroup = std::fs::read(args.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer("/linux/cgroupsPath").and_then(|p| p.as_str()).map(String::from))
        .unwrap_or_default();
    let writer = match LogWriter::open(&args.log) {
        Ok(w) => std::sync::Arc::new(std::sync::Mutex::new(w)),
        Err(e) => return fail(format!("opening the log {}: {e}", args.log.display())),
    };
    let (out_r, out_w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let (err_r, err_w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    // A pipe for stdin when the container keeps it (non-terminal), its write end ours.
    let (stdin_r, stdin_w) = if args.stdin && !args.tty {
        match std::io::pipe() {
            Ok((r, w)) => (Some(r), Some(w)),
            Err(e) => return fail(format!("pipe: {e}")),
        }
    } else {
        (None, None)
    };
    // runc hands a terminal's master end over a socket; it dials it from the bundle.
    let console = if args.tty {
        match attach::listen(&args.bundle, CONSOLE_SOCKET) {
            Ok(l) => Some(l),
            Err(e) => return fail(format!("console socket: {e}")),
        }
    } else {
        None
    };
    let attach_listener = attach::listen(&args.bundle, attach::SOCKET);
    let runc_log = args.bundle.join("runc.log");
    let pid_file = args.bundle.join("pid");
    let runc = |extra: &[&std::ffi::OsStr]| {
        let mut c = Command::new(&args.runc);
        c.arg("--root").arg(&args.root).arg("--log").arg(&runc_log).args(["--log-format", "json"]).args(extra);
        c
    };
    // `runc run --detach` creates and starts the container in one runc process and hands
    // it runc's stdio (pass-through mode), or a new terminal; the container's init is
    // reparented to this subreaper when runc exits.
    let mut run_args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), "--detach".as_ref()];
    if args.tty {
        run_args.extend::<[&std::ffi::OsStr; 2]>(["--console-socket".as_ref(), CONSOLE_SOCKET.as_ref()]);
    }
    run_args.extend::<[&std::ffi::OsStr; 5]>(["--bundle".as_ref(), args.bundle.as_os_str(), "--pid-file".as_ref(), pid_file.as_os_str(), args.id.as_ref()]);
    let mut command = runc(&run_args);
    command.stdin(stdin_r.map(Stdio::from).unwrap_or_else(Stdio::null));
    if args.tty {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        drop((out_w, err_w));
    } else {
        command.stdout(out_w).stderr(err_w);
    }
    let ran = command.status();
    let started_at = now();
    match ran {
        Ok(s) if s.success() => {}
        Ok(_) => return fail(runc_error(&runc_log).unwrap_or_else(|| "runc run failed".into())),
        Err(e) => return fail(format!("running runc: {e}")),
    }
    // The terminal was sent before `runc run --detach` returned.
    let terminal = match &console {
        Some(listener) => {
            let _ = listener.set_nonblocking(true);
            match attach::receive_terminal(listener) {
                Ok(fd) => Some(std::fs::File::from(fd)),
                Err(e) => return fail(format!("the container's terminal: {e}")),
            }
        }
        None => None,
    };
    drop(console);
    let _ = std::fs::remove_file(args.bundle.join(CONSOLE_SOCKET));
    // Hold the terminal's other end until the container has exited and its last output
    // has reached the master: when the last slave descriptor closes, output still in the
    // kernel's flip buffer can be lost to the master's EIO.
    let held_slave = terminal.as_ref().and_then(|t| {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: ioctl(2) TIOCGPTPEER on the master we hold; it returns a new descriptor
        // (or -1), owned by the value below.
        let fd = unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        // SAFETY: fd is fresh and ours.
        (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    });
    let clone = |f: &Option<std::fs::File>| f.as_ref().and_then(|f| f.try_clone().ok());
    let input = match (&terminal, stdin_w) {
        (Some(_), _) if args.stdin => clone(&terminal).map(attach::Input::Terminal),
        (None, Some(w)) => Some(attach::Input::Pipe(std::fs::File::from(std::os::fd::OwnedFd::from(w)))),
        _ => None,
    };
    let hub = attach::Hub::new(input, clone(&terminal), args.stdin_once);
    match attach_listener {
        Ok(l) => hub.serve(l),
        Err(e) => eprintln!("attach socket: {e}"),
    }
    let outputs: Vec<(Box<dyn std::io::Read + Send>, Stream, attach::Kind)> = match terminal {
        Some(t) => vec![(Box::new(t), Stream::Stdout, attach::Kind::Stdout)],
        None => vec![(Box::new(out_r), Stream::Stdout, attach::Kind::Stdout), (Box::new(err_r), Stream::Stderr, attach::Kind::Stderr)],
    };
    let readers: Vec<_> = outputs
        .into_iter()
        .map(|(r, s, kind)| {
            let (w, hub) = (writer.clone(), hub.clone());
            std::thread::spawn(move || cri_log::copy_lines(attach::Tee::new(r, kind, hub), s, &w))
        })
        .collect();
    let pid: i32 = match std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse().ok()) {
        Some(p) => p,
        None => return fail("runc wrote no pid file".into()),
    };
    report(&Started { pid: Some(pid), started_at: Some(started_at.clone()), error: None });
    // Nobody reads stdout any more (the agent may be gone): point it at /dev/null.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 of two open descriptors.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    let status = reap(pid);
    if held_slave.is_some() {
        // Let the kernel move what the container wrote last to the master, then let go.
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(held_slave);
    }
    // The output ends when the last process holding the pipes is gone; a process that
    // escaped the container's PID namespace could hold them for ever, so wait a little.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for r in readers {
            let _ = r.join();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
    let (exit_code, signal) = match status {
        Some(s) if libc::WIFEXITED(s) => (libc::WEXITSTATUS(s), None),
        Some(s) if libc::WIFSIGNALED(s) => (128 + libc::WTERMSIG(s), Some(libc::WTERMSIG(s))),
        _ => (255, None),
    };
    let reason = (signal == Some(libc::SIGKILL) && !cgroup.is_empty() && oom_kills(&cgroup) > 0).then(|| "OOMKilled".to_string());
    write_exit(&args.bundle, &ExitRecord { exit_code, signal, started_at: Some(started_at), finished_at: now(), reason, message: None });
    // Attached clients see the end once the exit is recorded.
    hub.close_all();
    let _ = std::fs::remove_file(args.bundle.join(attach::SOCKET));
    0
}

/// Reap children until `pid` ends; its wait status.
fn reap(pid: i32) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid pointer to an int.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            return Some(status);
        }
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
    }
}

/// Start a shim for the container in `args.bundle`: the re-executed `binary shim …`, in
/// its own session; returns the shim's PID and what it reported.
pub fn spawn(binary: &Path, args: &ShimArgs) -> Result<(u32, Started), String> {
    use std::os::unix::process::CommandExt;
    let shim_log = std::fs::File::create(args.bundle.join("shim.log")).map_err(|e| format!("shim log: {e}"))?;
    let mut cmd = Command::new(binary);
    cmd.arg("shim")
        .arg("--runc")
        .arg(&args.runc)
        .arg("--root")
        .arg(&args.root)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--id")
        .arg(&args.id)
        .arg("--log")
        .arg(&args.log);
    for (on, flag) in [(args.stdin, "--stdin"), (args.stdin_once, "--stdin-once"), (args.tty, "--tty")] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(shim_log);
    // SAFETY: setsid(2) is async-signal-safe, as the child side of fork requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting the shim {}: {e}", binary.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("the shim has no stdout")?;
    let mut line = String::new();
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    // The shim outlives this call: its exit is reaped by a thread, so no zombie stays.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let started: Started = serde_json::from_str(line.trim()).map_err(|_| {
        let log = std::fs::read_to_string(args.bundle.join("shim.log")).unwrap_or_default();
        format!("the shim said nothing: {}", log.trim())
    })?;
    std::fs::write(args.bundle.join("shim.pid"), pid.to_string()).map_err(|e| e.to_string())?;
    Ok((pid, started))
}

/// Whether process `pid` still exists.
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The shim PID recorded in a bundle.
pub fn recorded_pid(bundle: &Path) -> Option<i32> {
    std::fs::read_to_string(bundle.join("shim.pid")).ok()?.trim().parse().ok()
}
