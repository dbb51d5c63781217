//! Attaching to a container's own standard streams (`kubectl attach`, `kubectl run -it`),
//! as containerd's shim offers them to kubelet.
//!
//! The shim keeps the container's stdin (a pipe, or the terminal runc hands over through
//! its console socket) and copies the container's output to every attached client as well
//! as to the CRI log. Clients reach it on a unix socket in the bundle ([`SOCKET`]), so an
//! agent that restarted still reaches containers it adopted. The wire is the product's
//! own: frames of a kind byte, a 4-byte big-endian length and the payload
//! ([`MAX_FRAME`] at most).
//!
//! Semantics follow containerd's CRI: a client with stdin that ends it (or goes away)
//! closes the container's stdin when the container has `stdinOnce` and no terminal; a
//! client that cannot keep up (its queue of [`QUEUE`] chunks full) is dropped rather than
//! slowing the container; when the container ends every client's connection ends.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// The socket's name in the bundle.
pub const SOCKET: &str = "attach.sock";
/// The largest payload of a frame.
pub const MAX_FRAME: usize = 64 * 1024;
/// Chunks of output queued for one client before it is dropped as too slow.
pub const QUEUE: usize = 64;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client → shim: bytes for the container's stdin (an empty one says "I have stdin").
    Stdin = 0,
    /// Shim → client: the container's stdout (with a terminal: all its output).
    Stdout = 1,
    /// Shim → client: the container's stderr.
    Stderr = 2,
    /// Client → shim: the client's stdin ended.
    CloseStdin = 3,
    /// Client → shim: the terminal's new size (width, height: two big-endian u16).
    Resize = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Stdin,
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::CloseStdin,
            4 => Kind::Resize,
            _ => return None,
        })
    }
}

/// One frame on the wire.
pub fn encode(kind: Kind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(kind as u8);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits a byte stream into frames; refuses unknown kinds and oversized payloads.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Add bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<(Kind, Vec<u8>)>, String> {
        let Some(header) = self.buf.get(..5) else { return Ok(None) };
        let kind = Kind::from_byte(header[0]).ok_or_else(|| format!("unknown frame kind {}", header[0]))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("frame of {len} bytes (at most {MAX_FRAME})"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

/// A path to `name` in `dir` short enough for a socket address whatever `dir`'s length
/// (`sun_path` holds 108 bytes): through the descriptor of the open directory.
fn short_path(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Set a terminal's window size.
pub fn resize_terminal(fd: &impl AsRawFd, width: u16, height: u16) {
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ on a terminal descriptor with a valid winsize.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Receive the terminal runc sends on its console socket (`--console-socket`): the
/// master end of the container's pseudo-terminal, passed as `SCM_RIGHTS`.
pub fn receive_terminal(listener: &UnixListener) -> std::io::Result<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let (conn, _) = listener.accept()?;
    let mut name = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    recvmsg(&conn, &mut [std::io::IoSliceMut::new(&mut name)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(std::io::Error::other("runc sent no terminal on the console socket"))
}

/// Bind a listening socket named `name` in `bundle`.
pub fn listen(bundle: &Path, name: &str) -> std::io::Result<UnixListener> {
    let dir = File::open(bundle)?;
    let path = short_path(&dir, name);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Only root reaches a container's streams.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The container's stdin as the shim holds it.
pub enum Input {
    /// The write end of its stdin pipe.
    Pipe(File),
    /// Its terminal's master end.
    Terminal(File),
}

/// The shim's side: the attached clients and the container's stdin.
pub struct Hub {
    clients: Mutex<Vec<SyncSender<Arc<[u8]>>>>,
    stdin: Mutex<Option<Input>>,
    /// The terminal, for resizes.
    terminal: Option<File>,
    stdin_once: bool,
    closed: AtomicBool,
}

impl Hub {
    /// A hub for a container whose stdin is `stdin` (none: `/dev/null`), with a terminal
    /// when `terminal` is given.
    pub fn new(stdin: Option<Input>, terminal: Option<File>, stdin_once: bool) -> Arc<Hub> {
        Arc::new(Hub { clients: Mutex::new(Vec::new()), stdin: Mutex::new(stdin), terminal, stdin_once, closed: AtomicBool::new(false) })
    }

    /// Send output to every client; a client whose queue is full is dropped.
    pub fn broadcast(&self, kind: Kind, data: &[u8]) {
        let Ok(mut clients) = self.clients.lock() else { return };
        if clients.is_empty() {
            return;
        }
        let frames: Vec<Arc<[u8]>> = data.chunks(MAX_FRAME).map(|c| Arc::from(encode(kind, c))).collect();
        clients.retain(|c| frames.iter().all(|f| !matches!(c.try_send(f.clone()), Err(TrySendError::Full(_) | TrySendError::Disconnected(_)))));
    }

    /// End every client's connection (the container ended) and take no more.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut clients) = self.clients.lock() {
            clients.clear();
        }
    }

    fn write_stdin(&self, data: &[u8]) {
        let Ok(mut stdin) = self.stdin.lock() else { return };
        let failed = match stdin.as_mut() {
            Some(Input::Pipe(f) | Input::Terminal(f)) => f.write_all(data).is_err(),
            None => false,
        };
        if failed {
            *stdin = None;
        }
    }

    /// A client with stdin ended it: with `stdinOnce` and no terminal the container's
    /// stdin closes (containerd's rule; a terminal stays open for the next client).
    fn client_stdin_ended(&self) {
        if self.stdin_once {
            if let Ok(mut stdin) = self.stdin.lock() {
                if matches!(*stdin, Some(Input::Pipe(_))) {
                    *stdin = None;
                }
            }
        }
    }

    /// Serve clients on `listener` from a thread of its own.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) {
        let hub = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if hub.closed.load(Ordering::SeqCst) {
                    return;
                }
                hub.add(conn);
            }
        });
    }

    fn add(self: &Arc<Self>, conn: UnixStream) {
        let (Ok(mut writer), Ok(shutter)) = (conn.try_clone(), conn.try_clone()) else { return };
        let (tx, rx) = sync_channel::<Arc<[u8]>>(QUEUE);
        if let Ok(mut clients) = self.clients.lock() {
            clients.push(tx);
        }
        // Output to the client, until it is dropped or the container ends.
        std::thread::spawn(move || {
            for frame in rx {
                if writer.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = shutter.shutdown(std::net::Shutdown::Both);
        });
        let hub = self.clone();
        std::thread::spawn(move || {
            let mut conn = conn;
            let mut decoder = Decoder::default();
            let mut buf = [0u8; 16 * 1024];
            let mut has_stdin = false;
            let mut stdin_ended = false;
            'read: loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                decoder.push(&buf[..n]);
                loop {
                    match decoder.next_frame() {
                        Ok(Some((Kind::Stdin, data))) => {
                            has_stdin = true;
                            if !data.is_empty() && !stdin_ended {
                                hub.write_stdin(&data);
                            }
                        }
                        Ok(Some((Kind::CloseStdin, _))) => {
                            if !stdin_ended {
                                stdin_ended = true;
                                hub.client_stdin_ended();
                            }
                        }
                        Ok(Some((Kind::Resize, data))) if data.len() == 4 => {
                            if let Some(t) = &hub.terminal {
                                resize_terminal(t, u16::from_be_bytes([data[0], data[1]]), u16::from_be_bytes([data[2], data[3]]));
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
            }
            // A client with stdin that went away ended its stdin.
            if has_stdin && !stdin_ended {
                hub.client_stdin_ended();
            }
        });
    }
}

/// Copies what it reads to the attached clients too.
pub struct Tee<R> {
    inner: R,
    kind: Kind,
    hub: Arc<Hub>,
}

impl<R> Tee<R> {
    /// Read `inner`, a container output of `kind`, for the log and the clients.
    pub fn new(inner: R, kind: Kind, hub: Arc<Hub>) -> Tee<R> {
        Tee { inner, kind, hub }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hub.broadcast(self.kind, &buf[..n]);
        }
        Ok(n)
    }
}

/// The agent's side: a connection to a running container's streams.
pub struct Attachment {
    /// Writes to the container's stdin (when asked for); shut it down to end stdin.
    pub stdin: Option<tokio::io::DuplexStream>,
    /// The container's stdout (with a terminal: all its output), when asked for.
    pub stdout: Option<tokio::io::DuplexStream>,
    /// Its stderr, when asked for (never with a terminal).
    pub stderr: Option<tokio::io::DuplexStream>,
    /// Sends a terminal size.
    pub resize: tokio::sync::mpsc::UnboundedSender<(u16, u16)>,
    /// Resolves when the connection ends (the container ended, or the shim dropped us).
    pub done: tokio::sync::oneshot::Receiver<()>,
}

/// Attach to the container whose bundle is `bundle`, with the streams asked for.
pub async fn connect(bundle: &Path, stdin: bool, stdout: bool, stderr: bool) -> std::io::Result<Attachment> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = File::open(bundle)?;
    let conn = UnixStream::connect(short_path(&dir, SOCKET))?;
    conn.set_nonblocking(true)?;
    let conn = tokio::net::UnixStream::from_std(conn)?;
    let (mut read, mut write) = conn.into_split();
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, u16)>();
    // Everything for the shim goes through one writer.
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = frames_rx.recv() => match f { Some(f) => f, None => break },
                r = resize_rx.recv() => match r {
                    Some((w, h)) => {
                        let mut size = w.to_be_bytes().to_vec();
                        size.extend_from_slice(&h.to_be_bytes());
                        encode(Kind::Resize, &size)
                    }
                    None => continue,
                },
            };
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let stdin_end = if stdin {
        let (ours, theirs) = tokio::io::duplex(MAX_FRAME);
        let tx = frames_tx.clone();
        let _ = tx.send(encode(Kind::Stdin, &[]));
        tokio::spawn(async move {
            let mut ours = ours;
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                match ours.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(encode(Kind::Stdin, &buf[..n])).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(encode(Kind::CloseStdin, &[]));
        });
        Some(theirs)
    } else {
        None
    };
    drop(frames_tx);
    let (out_ours, out_theirs) = tokio::io::duplex(MAX_FRAME);
    let (err_ours, err_theirs) = tokio::io::duplex(MAX_FRAME);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut out, mut err) = (stdout.then_some(out_ours), stderr.then_some(err_ours));
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; 32 * 1024];
        'read: loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            decoder.push(&buf[..n]);
            loop {
                let (kind, data) = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => break 'read,
                };
                let sink = match kind {
                    Kind::Stdout => &mut out,
                    Kind::Stderr => &mut err,
                    _ => continue,
                };
                if let Some(w) = sink.as_mut() {
                    if w.write_all(&data).await.is_err() {
                        *sink = None;
                    }
                }
            }
        }
        drop((out, err));
        let _ = done_tx.send(());
    });
    Ok(Attachment { stdin: stdin_end, stdout: stdout.then_some(out_theirs), stderr: stderr.then_some(err_theirs), resize: resize_tx, done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_hostile_ones_are_refused() {
        let mut d = Decoder::default();
        let mut wire = encode(Kind::Stdout, b"hello");
        wire.extend(encode(Kind::Resize, &[0, 80, 0, 24]));
        // Byte by byte: nothing before a frame is whole.
        let mut got = Vec::new();
        for b in wire {
            d.push(&[b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![(Kind::Stdout, b"hello".to_vec()), (Kind::Resize, vec![0, 80, 0, 24])]);
        let mut d = Decoder::default();
        d.push(&[9, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err(), "a 4 GiB frame is refused before any of it is read");
    }

    #[test]
    fn a_long_bundle_path_still_gets_a_socket_and_output_reaches_clients() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("x".repeat(120)).join("y".repeat(60));
        std::fs::create_dir_all(&bundle).unwrap();
        let (read, mut write) = std::io::pipe().unwrap();
        let hub = Hub::new(Some(Input::Pipe(File::from(OwnedFd::from(write.try_clone().unwrap())))), None, true);
        drop(read);
        hub.serve(listen(&bundle, SOCKET).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let mut a = connect(&bundle, false, true, true).await.unwrap();
            // The hub learns of the client on its own thread.
            for _ in 0..100 {
                if !hub.clients.lock().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            hub.broadcast(Kind::Stdout, b"out");
            hub.broadcast(Kind::Stderr, b"err");
            hub.close_all();
            let (mut out, mut err) = (String::new(), String::new());
            a.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
            a.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
            assert_eq!((out.as_str(), err.as_str()), ("out", "err"));
            a.done.await.unwrap();
        });
        let _ = write.flush();
    }
}
