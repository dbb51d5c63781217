//! What relaying may hold of the process's file descriptors. Every relayed TCP connection
//! (the Service proxy's, pod to pod through the capture, a pod's ports on the host) holds
//! two and every UDP flow one; clients that open many must not take the descriptors the
//! API server and the listeners need. One count for the whole process, since the limit
//! is the process's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static RELAYS: AtomicUsize = AtomicUsize::new(0);
static WARNED: Mutex<Option<Instant>> = Mutex::new(None);

/// The process's limit on open descriptors (its soft limit, read each time: an operator
/// may change it with `prlimit`).
pub fn descriptor_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// Raise the soft limit on open descriptors to the hard limit, as every Go program
/// (kube-apiserver, kubelet, kube-proxy) does at start since Go 1.19: each connection,
/// relayed connection, UDP flow and watch holds one, and a shell's default soft limit
/// (1,024) is far below what a server is allowed. The caps here are shares of it.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) and setrlimit(2) read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The most TCP connections relayed at once: two descriptors each, together a quarter of
/// the limit.
pub fn max_tcp_relays() -> usize {
    descriptor_limit() / 8
}

/// The most UDP flows carried at once: a quarter of the descriptor limit (each flow holds
/// a socket). Past it, datagrams that would start a flow are dropped, as a full conntrack
/// table drops them.
pub fn max_udp_flows() -> usize {
    descriptor_limit() / 4
}

/// Run `warn` unless it ran less than 10 s ago (by `last`): what a cap says when it
/// refuses.
pub(crate) fn warn_at_most_every_10s(last: &Mutex<Option<Instant>>, warn: impl FnOnce()) {
    if let Ok(mut last) = last.lock() {
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            warn();
            *last = Some(Instant::now());
        }
    }
}

/// A relayed TCP connection, counted while it lives (its task may be aborted anywhere).
#[derive(Debug)]
pub struct Relay(());

impl Relay {
    /// Room for one more relayed connection, or `None` when [`max_tcp_relays`] are held:
    /// then `inbound` is set to be reset when the caller drops it (said at most once per
    /// 10 s).
    pub fn try_start(inbound: &tokio::net::TcpStream) -> Option<Relay> {
        let room = max_tcp_relays();
        if RELAYS.fetch_add(1, Ordering::Relaxed) >= room {
            RELAYS.fetch_sub(1, Ordering::Relaxed);
            let _ = inbound.set_zero_linger();
            warn_at_most_every_10s(&WARNED, || {
                tracing::warn!("{room} TCP connections are relayed at most (a quarter of the descriptor limit): resetting new ones")
            });
            return None;
        }
        Some(Relay(()))
    }

    /// Carry bytes both ways between `inbound` and `outbound` until both sides have
    /// closed, counted until then. Nagle's algorithm is off on both, as Go (kube-proxy's
    /// userspace mode) sets it on every TCP connection: each write here is the peer's
    /// own, and Nagle would hold a response's second part until the client's delayed ACK
    /// of its first, up to 40 ms.
    pub async fn carry(self, inbound: &mut tokio::net::TcpStream, outbound: &mut tokio::net::TcpStream) {
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(inbound, outbound).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        RELAYS.fetch_sub(1, Ordering::Relaxed);
    }
}
