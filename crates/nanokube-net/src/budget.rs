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

/// The most TCP connections relayed at once: two descriptors each, together a quarter of
/// the limit.
pub fn max_tcp_relays() -> usize {
    descriptor_limit() / 8
}

/// A relayed TCP connection, counted while it lives (its task may be aborted anywhere).
#[derive(Debug)]
pub struct Relay(());

impl Relay {
    /// Room for one more relayed connection, or `None` when [`max_tcp_relays`] are held
    /// (the caller resets the connection; said at most once per 10 s).
    pub fn try_start() -> Option<Relay> {
        let room = max_tcp_relays();
        if RELAYS.fetch_add(1, Ordering::Relaxed) >= room {
            RELAYS.fetch_sub(1, Ordering::Relaxed);
            if let Ok(mut warned) = WARNED.lock() {
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!("{room} TCP connections are relayed at most (a quarter of the descriptor limit): resetting new ones");
                    *warned = Some(Instant::now());
                }
            }
            return None;
        }
        Some(Relay(()))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        RELAYS.fetch_sub(1, Ordering::Relaxed);
    }
}
