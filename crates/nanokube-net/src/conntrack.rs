//! Where a pod's redirected UDP was going: the original destination of a flow, from the
//! pod namespace's connection tracking.
//!
//! A datagram caught by the pod's `REDIRECT` rule arrives at the capture socket with its
//! destination rewritten; the flow's conntrack entry keeps the original. The entry is
//! asked for by its reply tuple (the capture's address to the client: a hash lookup in the
//! kernel) over ctnetlink. Reading `/proc/net/nf_conntrack` walks every entry of the
//! namespace instead, and a pod's DNS lookups each start a flow (glibc sends each lookup
//! from a socket of its own) that stays in the table for 30 s: at a few hundred lookups a
//! second every new flow cost a read of thousands of lines. The table is read only when
//! ctnetlink cannot answer (a kernel without it).

use std::io::{Read, Seek};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// ctnetlink's subsystem and message types (`linux/netfilter/nfnetlink_conntrack.h`).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
/// Attributes: the tuples, their address and protocol parts.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
/// An attribute's type without its flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;

/// A namespace's connection tracking, opened inside it (both a netlink socket and a
/// `/proc` file answer about the namespace they were opened in, from any thread).
pub struct Conntrack {
    netlink: Option<OwnedFd>,
    table: Option<Arc<Mutex<std::fs::File>>>,
    seq: AtomicU32,
}

impl Conntrack {
    /// Open the calling thread's namespace's connection tracking (call it inside the
    /// pod's namespace). Either part may be missing; [`Self::is_available`] says whether
    /// any is there.
    pub fn open_here() -> Conntrack {
        // SAFETY: socket(2); the descriptor is owned by the value made from it.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_NETFILTER) };
        // SAFETY: fd is fresh and ours.
        let netlink = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        let table = std::fs::File::open("/proc/thread-self/net/nf_conntrack").ok().map(|f| Arc::new(Mutex::new(f)));
        Conntrack { netlink, table, seq: AtomicU32::new(1) }
    }

    /// Whether the original destinations of flows can be found at all.
    pub fn is_available(&self) -> bool {
        self.netlink.is_some() || self.table.is_some()
    }

    /// The original destination of the UDP flow from `client` that was redirected to
    /// `capture` (the socket it arrived at).
    pub async fn udp_destination(&self, client: SocketAddrV4, capture: SocketAddrV4) -> Option<SocketAddrV4> {
        if let Some(found) = self.ask_kernel(client, capture) {
            return found;
        }
        let table = self.table.clone()?;
        let text = tokio::task::spawn_blocking(move || {
            let mut f = table.lock().ok()?;
            f.rewind().ok()?;
            let mut s = String::new();
            f.read_to_string(&mut s).ok()?;
            Some(s)
        })
        .await
        .ok()
        .flatten()?;
        table_destination(&text, client)
    }

    /// Ask ctnetlink for the entry whose reply tuple is `capture` → `client`:
    /// `Some(answer)` when it answered (`None` inside: no such flow), `None` when it
    /// could not be asked. The kernel answers within the `send` call, so the answer is
    /// already queued when `recv` runs and neither blocks.
    pub fn ask_kernel(&self, client: SocketAddrV4, capture: SocketAddrV4) -> Option<Option<SocketAddrV4>> {
        let fd = self.netlink.as_ref()?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let request = get_request(seq, capture, client);
        // SAFETY: send(2) of a buffer we own, on a socket we own.
        if unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
            return None;
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: recv(2) into a buffer we own, bounded by its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            let n = usize::try_from(n).ok()?;
            match parse_answer(&buf[..n], seq) {
                Answer::Other => continue,
                Answer::Unsupported => return None,
                Answer::Found(to) => return Some(Some(to)),
                Answer::NotFound => return Some(None),
            }
        }
    }
}

/// An `IPCTNL_MSG_CT_GET` request for the UDP entry whose reply tuple goes from `from`
/// to `to`.
pub fn get_request(seq: u32, from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
        out.extend_from_slice(&u16::try_from(4 + payload.len()).unwrap_or(u16::MAX).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut ip = Vec::new();
    attr(&mut ip, CTA_IP_V4_SRC, &from.ip().octets());
    attr(&mut ip, CTA_IP_V4_DST, &to.ip().octets());
    let mut proto = Vec::new();
    attr(&mut proto, CTA_PROTO_NUM, &[libc::IPPROTO_UDP as u8]);
    attr(&mut proto, CTA_PROTO_SRC_PORT, &from.port().to_be_bytes());
    attr(&mut proto, CTA_PROTO_DST_PORT, &to.port().to_be_bytes());
    let mut tuple = Vec::new();
    attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0]; // nfgenmsg: family, version 0, res_id 0
    attr(&mut body, CTA_TUPLE_REPLY | NLA_F_NESTED, &tuple);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&u32::try_from(16 + body.len()).unwrap_or(u32::MAX).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// What one netlink datagram said about request `seq`.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The entry, and its original destination.
    Found(SocketAddrV4),
    /// No entry has that reply tuple.
    NotFound,
    /// ctnetlink could not answer (not in this kernel, not permitted, a malformed
    /// answer).
    Unsupported,
    /// Nothing about `seq` (an answer to an earlier request).
    Other,
}

/// Read the kernel's answer to request `seq` from one datagram.
pub fn parse_answer(data: &[u8], seq: u32) -> Answer {
    let mut at = 0;
    while let Some(header) = data.get(at..at + 16) {
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let ty = u16::from_ne_bytes([header[4], header[5]]);
        let this_seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        let Some(message) = data.get(at..at + len).filter(|_| len >= 16) else { return Answer::Unsupported };
        if this_seq == seq {
            if ty == NLMSG_ERROR {
                let error = message.get(16..20).map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                return if error == -libc::ENOENT { Answer::NotFound } else { Answer::Unsupported };
            }
            if ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
                // After the nfgenmsg: the entry's attributes.
                let original = message.get(20..).and_then(|attrs| attribute(attrs, CTA_TUPLE_ORIG));
                let ip = original.and_then(|t| attribute(t, CTA_TUPLE_IP)).and_then(|ip| attribute(ip, CTA_IP_V4_DST));
                let port = original.and_then(|t| attribute(t, CTA_TUPLE_PROTO)).and_then(|p| attribute(p, CTA_PROTO_DST_PORT));
                return match (ip.and_then(|a| <[u8; 4]>::try_from(a).ok()), port.and_then(|p| <[u8; 2]>::try_from(p).ok())) {
                    (Some(ip), Some(port)) => Answer::Found(SocketAddrV4::new(Ipv4Addr::from(ip), u16::from_be_bytes(port))),
                    _ => Answer::Unsupported,
                };
            }
        }
        at += len.next_multiple_of(4);
    }
    Answer::Other
}

/// The payload of the first attribute of type `want` (flags ignored) in `attrs`.
fn attribute(attrs: &[u8], want: u16) -> Option<&[u8]> {
    let mut at = 0;
    while let Some(header) = attrs.get(at..at + 4) {
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let ty = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < 4 {
            return None;
        }
        let payload = attrs.get(at + 4..at + len)?;
        if ty == want {
            return Some(payload);
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// The original destination of the UDP flow from `client` in the text of a namespace's
/// conntrack table (`/proc/net/nf_conntrack` lines: the original tuple, then the reply's).
pub fn table_destination(table: &str, client: SocketAddrV4) -> Option<SocketAddrV4> {
    let (src, sport) = (format!("src={}", client.ip()), format!("sport={}", client.port()));
    for line in table.lines() {
        let mut fields = line.split_whitespace();
        if !fields.by_ref().take(3).any(|f| f == "udp") {
            continue;
        }
        let rest: Vec<&str> = fields.collect();
        // The first src/dst/sport/dport are the original direction's.
        let first = |k: &str| rest.iter().find(|f| f.starts_with(k)).map(|f| &f[k.len()..]);
        if first("src=").map(|v| format!("src={v}")) != Some(src.clone()) || first("sport=").map(|v| format!("sport={v}")) != Some(sport.clone()) {
            continue;
        }
        let ip: Ipv4Addr = first("dst=")?.parse().ok()?;
        let port: u16 = first("dport=")?.parse().ok()?;
        return Some(SocketAddrV4::new(ip, port));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_request_names_the_reply_tuple() {
        let req = get_request(7, addr("127.0.0.1:15001"), addr("127.0.0.1:40633"));
        assert_eq!(req.len(), 72);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 0x0101);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        let tuple = attribute(&req[20..], CTA_TUPLE_REPLY).unwrap();
        let ip = attribute(tuple, CTA_TUPLE_IP).unwrap();
        assert_eq!(attribute(ip, CTA_IP_V4_SRC), Some(&[127, 0, 0, 1][..]));
        let proto = attribute(tuple, CTA_TUPLE_PROTO).unwrap();
        assert_eq!(attribute(proto, CTA_PROTO_NUM), Some(&[17][..]));
        assert_eq!(attribute(proto, CTA_PROTO_SRC_PORT), Some(&15001u16.to_be_bytes()[..]));
        assert_eq!(attribute(proto, CTA_PROTO_DST_PORT), Some(&40633u16.to_be_bytes()[..]));
    }

    /// An answer as the kernel writes it: the entry with its original tuple.
    fn entry(seq: u32, dst: SocketAddrV4) -> Vec<u8> {
        // The same encoding as a request, with the tuple as the original one.
        let mut m = get_request(seq, addr("127.0.0.1:5000"), dst);
        m[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
        m[22..24].copy_from_slice(&(CTA_TUPLE_ORIG | NLA_F_NESTED).to_ne_bytes());
        m
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    #[test]
    fn answers_are_read_and_bad_ones_refused() {
        assert_eq!(parse_answer(&entry(3, addr("127.96.0.10:53")), 3), Answer::Found(addr("127.96.0.10:53")));
        assert_eq!(parse_answer(&entry(2, addr("127.96.0.10:53")), 3), Answer::Other, "an earlier request's answer");
        assert_eq!(parse_answer(&error(3, libc::ENOENT), 3), Answer::NotFound);
        assert_eq!(parse_answer(&error(3, libc::EPERM), 3), Answer::Unsupported);
        // Truncated anywhere: never a panic, never a made-up address.
        let whole = entry(3, addr("127.96.0.10:53"));
        for cut in 0..whole.len() {
            let mut bad = whole[..cut].to_vec();
            if bad.len() >= 4 {
                bad[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert_ne!(parse_answer(&bad, 3), Answer::Found(addr("127.96.0.10:53")), "cut at {cut}");
        }
        // An attribute claiming more than there is.
        let mut lying = whole.clone();
        lying[20..22].copy_from_slice(&1000u16.to_ne_bytes());
        assert_eq!(parse_answer(&lying, 3), Answer::Unsupported);
    }

    #[test]
    fn table_lines() {
        let table = "ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.96.0.1 sport=5000 dport=443 src=127.0.0.1 dst=127.0.0.1 sport=15001 dport=5000 [ASSURED] mark=0 zone=0 use=2\n\
                     ipv4     2 udp      17 29 src=127.0.0.1 dst=127.96.0.10 sport=40001 dport=53 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=15001 dport=40001 mark=0 zone=0 use=2\n";
        assert_eq!(table_destination(table, addr("127.0.0.1:40001")), Some(addr("127.96.0.10:53")));
        assert_eq!(table_destination(table, addr("127.0.0.1:5000")), None, "TCP lines are not UDP flows");
    }
}
