//! A process run in a running container (`runc exec`), its streams handed to whoever
//! asked (`kubectl exec`): stdin, stdout and stderr as pipes, or one pseudo-terminal
//! that can be resized (runc runs on a terminal of ours and relays it to the
//! container's). runc's own complaints also go to a log file of their own, so a process
//! that could not start is told apart from one that ran and failed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::runc::Runc;

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process ran and exited with this code (128 + signal when killed).
    Exited(i32),
    /// It never started: runc's reason (`exec: "nope": executable file not found in $PATH`).
    NotStarted(String),
}

/// A running exec.
pub struct Exec {
    child: tokio::process::Child,
    /// Write end of its stdin (when asked for); drop it to close stdin.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Its stdout (with a TTY: the terminal, stdout and stderr together).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its stderr (none with a TTY).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The terminal's master end, for resizing.
    pub terminal: Option<Terminal>,
    log: PathBuf,
}

/// A pseudo-terminal's master end.
#[derive(Clone)]
pub struct Terminal(std::sync::Arc<AsyncFd<OwnedFd>>);

impl Terminal {
    /// Set the window size (`TIOCSWINSZ`).
    pub fn resize(&self, width: u16, height: u16) {
        let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ on the terminal's master descriptor with a valid winsize.
        unsafe { libc::ioctl(self.0.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

impl AsyncRead for Terminal {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = match self.0.poll_read_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            // SAFETY: read(2) into the initialized, unfilled part of the buffer.
            let r = guard.try_io(|fd| {
                let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    // The slave side closed (the process ended): end of stream.
                    if e.raw_os_error() == Some(libc::EIO) {
                        return Ok(0);
                    }
                    return Err(e);
                }
                Ok(n as usize)
            });
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Terminal {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = match self.0.poll_write_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            // SAFETY: write(2) from a valid slice.
            match guard.try_io(|fd| {
                let n = unsafe { libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Which streams an exec has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams {
    /// stdin, written by the caller.
    pub stdin: bool,
    /// stdout, read by the caller (otherwise `/dev/null`).
    pub stdout: bool,
    /// stderr, likewise.
    pub stderr: bool,
    /// One terminal instead.
    pub tty: bool,
}

/// Start `argv` in container `id`. `work` is a directory for runc's log.
pub async fn spawn(runc: &Runc, id: &str, argv: &[String], streams: Streams, work: &Path) -> Result<Exec, String> {
    let (tty, stdin) = (streams.tty, streams.stdin);
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let tag = format!("{:08x}", fastrand::u32(..));
    let log = work.join(format!("exec-{tag}.log"));
    let mut cmd = tokio::process::Command::new(&runc.binary);
    cmd.arg("--root").arg(&runc.state).arg("--log").arg(&log).arg("--log-format").arg("json").arg("exec");
    cmd.kill_on_drop(true);
    if !tty {
        cmd.arg(id).args(argv);
        cmd.stdin(piped(stdin)).stdout(piped(streams.stdout)).stderr(piped(streams.stderr));
        let mut child = cmd.spawn().map_err(|e| format!("runc: {e}"))?;
        let stdin_w = child.stdin.take().map(|w| Box::new(w) as Box<dyn AsyncWrite + Send + Unpin>);
        let stdout = child.stdout.take().map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>);
        let stderr = child.stderr.take().map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>);
        return Ok(Exec { child, stdin: stdin_w, stdout, stderr, terminal: None, log });
    }
    // runc gives a process a terminal only when runc itself runs detached (console
    // socket) or on a terminal: so runc gets one of ours. It puts ours in raw mode,
    // copies between it and the container's, and follows our window size (SIGWINCH, as
    // our terminal is its controlling one).
    let (master, slave) = open_pty()?;
    cmd.arg("--tty").arg(id).args(argv);
    let io = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    cmd.stdin(io(&slave)?).stdout(io(&slave)?).stderr(io(&slave)?);
    // SAFETY: setsid(2) and ioctl(TIOCSCTTY) on fd 0 are async-signal-safe, as the child
    // side of fork requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("runc: {e}"))?;
    // Only runc holds the terminal's other end now: reads end (EIO) when it exits.
    drop(slave);
    // SAFETY: the AsyncFd owns the descriptor and nothing else closes it while registered.
    let registered = unsafe { AsyncFd::register(master) }.map_err(|e| e.to_string())?;
    let terminal = Terminal(std::sync::Arc::new(registered));
    Ok(Exec {
        child,
        stdin: if stdin { Some(Box::new(terminal.clone())) } else { None },
        stdout: Some(Box::new(terminal.clone())),
        stderr: None,
        terminal: Some(terminal),
        log,
    })
}

/// A new pseudo-terminal: its master end (non-blocking) and its slave end.
fn open_pty() -> Result<(OwnedFd, OwnedFd), String> {
    let (mut master, mut slave): (RawFd, RawFd) = (-1, -1);
    // SAFETY: openpty(3) with pointers to two ints we own and no name, termios or size;
    // on success both descriptors are ours to own.
    unsafe {
        if libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) != 0 {
            return Err(format!("openpty: {}", std::io::Error::last_os_error()));
        }
        let (master, slave) = (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave));
        let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK | libc::O_CLOEXEC);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((master, slave))
    }
}

/// runc's last error in its JSON log, if any.
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .filter_map(|v| v["msg"].as_str().map(String::from))
        .next_back()
}

impl Exec {
    /// Wait for the end: the exit code, or why it never started.
    pub async fn wait(mut self) -> Outcome {
        let status = self.child.wait().await;
        let error = runc_error(&self.log);
        let _ = std::fs::remove_file(&self.log);
        match (status, error) {
            (_, Some(e)) => Outcome::NotStarted(e),
            (Ok(s), None) => Outcome::Exited(s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0))),
            (Err(e), None) => Outcome::NotStarted(e.to_string()),
        }
    }

    /// End it now (the client went away).
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}
