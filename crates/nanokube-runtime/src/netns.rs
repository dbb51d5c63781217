//! A pod's shared namespaces (network and IPC), kept alive by bind-mounting their
//! `/proc` files onto files in the pod's directory, so no pause process is needed.
//!
//! A namespace is made on a short-lived thread of its own: `unshare(2)` of a network or
//! IPC namespace changes only the calling thread, so the server's other threads are left
//! as they were. The pod's network namespace has only `lo`, brought up here: all of
//! 127.0.0.0/8 is local there, so the pod's own IP (from 127.244.0.0/16) answers inside
//! without any address to add.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Network.
    Net,
    /// System V IPC and POSIX message queues.
    Ipc,
}

impl Kind {
    fn flag(self) -> libc::c_int {
        match self {
            Kind::Net => libc::CLONE_NEWNET,
            Kind::Ipc => libc::CLONE_NEWIPC,
        }
    }
    fn proc_name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
        }
    }
}

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// Create a namespace of `kind` kept at `path` (an existing one there is kept).
pub fn create(kind: Kind, path: &Path) -> Result<(), String> {
    if is_namespace(path) {
        return Ok(());
    }
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> Result<(), String> {
        // SAFETY: unshare(2) of this thread's own namespace.
        if unsafe { libc::unshare(kind.flag()) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        if kind == Kind::Net {
            loopback_up()?;
        }
        let source = cstring(&PathBuf::from(format!("/proc/thread-self/ns/{}", kind.proc_name())))?;
        let dest = cstring(&target)?;
        // SAFETY: mount(2) with NUL-terminated paths that outlive the call.
        let rc = unsafe { libc::mount(source.as_ptr(), dest.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if rc != 0 {
            return Err(format!("keeping the namespace at {}: {}", target.display(), std::io::Error::last_os_error()));
        }
        Ok(())
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

/// Bring `lo` up in the network namespace at `path` (one made elsewhere, e.g. inside a
/// pod's user namespace).
pub fn loopback_up_in(path: &Path) -> Result<(), String> {
    within(path, loopback_up)?
}

/// Whether `path` holds a namespace (a bind mount of an nsfs file).
pub fn is_namespace(path: &Path) -> bool {
    let Ok(c) = cstring(path) else { return false };
    // SAFETY: statfs(2) into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == NSFS_MAGIC
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Release the namespace kept at `path` and remove the file.
pub fn remove(path: &Path) -> Result<(), String> {
    if let Ok(c) = cstring(path) {
        // SAFETY: umount2(2) of a path we mounted.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn loopback_up() -> Result<(), String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
        // Before lo is up nothing binds; an unbound socket is enough for the ioctl.
        // SAFETY: socket(2) whose descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        Ok(unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    });
    let sock = sock.map_err(|e| format!("socket: {e}"))?;
    // SAFETY: an ifreq zeroed, named "lo", read and written by SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(format!("reading lo's flags: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(format!("bringing lo up: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Run `f` on a thread that has entered the network namespace at `path` (sockets it makes
/// stay in that namespace after it returns).
pub fn within<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let ns = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::thread::spawn(move || -> Result<T, String> {
        // SAFETY: setns(2) of this thread (which ends after f) into a namespace file we hold open.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("entering the pod's network namespace: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

/// Give this thread's network namespace's `lo` the address `ip`/32 (a pod's IP), so
/// the pod has an IPv4 address besides 127.0.0.1: glibc's `getaddrinfo` with
/// `AI_ADDRCONFIG` (as `getent ahostsv4` and many programs ask) ignores 127.0.0.1 and
/// finds no IPv4 at all otherwise. An address already there is fine.
pub fn add_loopback_address(ip: std::net::Ipv4Addr) -> Result<(), String> {
    // SAFETY: socket(2); the descriptor is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and ours.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    const RTM_NEWADDR: u16 = 20;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const LO_INDEX: u32 = 1;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut msg = Vec::with_capacity(40);
    msg.extend_from_slice(&40u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: AF_INET, /32, no flags, host scope, lo.
    msg.extend_from_slice(&[libc::AF_INET as u8, 32, 0, libc::RT_SCOPE_HOST]);
    msg.extend_from_slice(&LO_INDEX.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&ip.octets());
    }
    // SAFETY: send(2) of a buffer we own, with its length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
    }
    let mut buf = [0u8; 256];
    // SAFETY: recv(2) into a buffer we own, with its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        return Err(format!("netlink answer: {}", std::io::Error::last_os_error()));
    }
    // An NLMSG_ERROR whose error is 0 (done) or -EEXIST (there already).
    let error = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if error != 0 && error != -libc::EEXIST {
        return Err(format!("adding {ip} to lo: {}", std::io::Error::from_raw_os_error(-error)));
    }
    Ok(())
}

/// A request to the socket maker: the namespace, the socket's kind, where to answer.
type SocketRequest = (PathBuf, rustix::net::SocketType, tokio::sync::oneshot::Sender<std::io::Result<std::os::fd::OwnedFd>>);

/// The thread that makes sockets inside pods' network namespaces, started at first use.
/// Relays, probes and port-forwards open a connection into a pod for every connection
/// they carry; a thread spawned for each (what [`within`] does) cost more than the
/// connection itself. This one enters the namespace each request names, makes the
/// socket and goes back to the host's (so it never keeps a deleted pod's namespace
/// alive); binding and connecting happen on the caller's runtime, and a socket stays in
/// the namespace it was made in.
fn socket_maker() -> Option<&'static std::sync::mpsc::Sender<SocketRequest>> {
    static MAKER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<SocketRequest>>> = std::sync::OnceLock::new();
    MAKER
        .get_or_init(|| {
            // The namespace of the thread starting it: the host's.
            let host = std::fs::File::open("/proc/thread-self/ns/net").ok()?;
            let (tx, rx) = std::sync::mpsc::channel::<SocketRequest>();
            let spawned = std::thread::Builder::new().name("netns-sockets".into()).spawn(move || {
                for (path, kind, answer) in rx {
                    let made = std::fs::File::open(&path).and_then(|ns| {
                        // SAFETY: setns(2) of this thread (which only makes sockets) into a
                        // namespace file held open for the call.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
                        let socket = rustix::net::socket_with(rustix::net::AddressFamily::INET, kind, flags, None);
                        // SAFETY: setns(2) of this thread back into the host's namespace,
                        // whose file it holds open. Should it fail, the next request still
                        // enters its own namespace first.
                        unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) };
                        Ok(socket?)
                    });
                    let _ = answer.send(made);
                }
            });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// A non-blocking IPv4 socket of `kind` made inside the network namespace at `path`.
async fn socket_in(path: &Path, kind: rustix::net::SocketType) -> std::io::Result<std::os::fd::OwnedFd> {
    let (answer, made) = tokio::sync::oneshot::channel();
    let maker = socket_maker().ok_or_else(|| std::io::Error::other("the namespace socket thread could not start"))?;
    maker.send((path.to_path_buf(), kind, answer)).map_err(|_| std::io::Error::other("the namespace socket thread is gone"))?;
    made.await.map_err(|_| std::io::Error::other("the namespace socket thread is gone"))?
}

/// A TCP connection to `addr` (IPv4) made inside the network namespace at `path`, given
/// up after `timeout`.
pub async fn connect(path: &Path, addr: std::net::SocketAddr, timeout: std::time::Duration) -> std::io::Result<tokio::net::TcpStream> {
    let fd = socket_in(path, rustix::net::SocketType::STREAM).await?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}"))),
    }
}

/// A UDP socket bound to an ephemeral port on every address of the network namespace at
/// `path` (made there, so it sends and receives there).
pub async fn udp_socket(path: &Path) -> std::io::Result<tokio::net::UdpSocket> {
    let fd = socket_in(path, rustix::net::SocketType::DGRAM).await?;
    rustix::net::bind(&fd, &std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0))?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// A netlink `sock_diag` socket made inside the network namespace at `path`: it keeps
/// answering about that namespace from any thread (a socket belongs to the namespace it
/// was made in). Asking it for listening sockets costs the kernel a walk of the listening
/// table only, where reading `/proc/net/tcp` walks the whole (machine-wide) connection
/// table.
pub fn diag_socket(path: &Path) -> Result<std::os::fd::OwnedFd, String> {
    within(path, || {
        // SAFETY: socket(2); the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is fresh and ours.
        Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    })?
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// The TCP sockets listening in the namespace of `sock` ([`diag_socket`]) that IPv4
/// clients can reach: address and port of each. An IPv6 socket on `::` (dual-stack, as
/// busybox's httpd and most servers bind) counts as `0.0.0.0`, a v4-mapped one as its
/// IPv4 address.
pub fn listening_tcp(sock: &std::os::fd::OwnedFd) -> std::io::Result<Vec<(std::net::Ipv4Addr, u16)>> {
    let mut out = dump_listening(sock, libc::AF_INET as u8)?;
    out.extend(dump_listening(sock, libc::AF_INET6 as u8)?);
    Ok(out)
}

fn dump_listening(sock: &std::os::fd::OwnedFd, family: u8) -> std::io::Result<Vec<(std::net::Ipv4Addr, u16)>> {
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes), native byte order but for the
    // socket id's ports and addresses, which are network order.
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: send(2) of a buffer we own, on a socket we own.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let data = &buf[..n as usize];
        let mut at = 0;
        while at + 16 <= data.len() {
            let len = u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
            let ty = u16::from_ne_bytes([data[at + 4], data[at + 5]]);
            if len < 16 || at + len > data.len() {
                return Ok(out);
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => return Err(std::io::Error::other("sock_diag answered with an error")),
                SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                    // inet_diag_msg: family, state, timer, retrans, then the socket id:
                    // sport (be16), dport (be16), src (16 bytes), ...
                    let m = &data[at + 16..at + len];
                    let port = u16::from_be_bytes([m[4], m[5]]);
                    let src: [u8; 16] = m[8..24].try_into().unwrap_or([0xff; 16]);
                    let addr = if m[0] == libc::AF_INET as u8 {
                        Some(std::net::Ipv4Addr::new(src[0], src[1], src[2], src[3]))
                    } else {
                        let v6 = std::net::Ipv6Addr::from(src);
                        if v6.is_unspecified() {
                            Some(std::net::Ipv4Addr::UNSPECIFIED)
                        } else {
                            v6.to_ipv4_mapped()
                        }
                    };
                    if let Some(a) = addr {
                        out.push((a, port));
                    }
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}
