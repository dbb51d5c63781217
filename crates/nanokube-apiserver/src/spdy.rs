//! SPDY/3.1, the server side, as kubectl 1.27–1.30 and client-go (through `spdystream`)
//! speak it for exec, attach and port-forward; kubectl 1.31 and newer still tunnel it
//! inside a WebSocket for port-forward. No maintained Rust crate speaks it, so the framing
//! is the product's own; zlib (with the protocol's preset dictionary) comes from flate2.
//!
//! What the clients use of the protocol, and so what is served: streams opened by the
//! client (`SYN_STREAM`, answered with an empty `SYN_REPLY` as kubelet answers every
//! stream it accepts), data both ways with `FLAG_FIN` half-closes, `RST_STREAM`, `PING`
//! echoed, `GOAWAY`. `spdystream` has no flow control (it neither sends nor honours
//! `WINDOW_UPDATE`), so none is enforced here either: the TCP connection is the back
//! pressure. `SETTINGS`, `WINDOW_UPDATE`, `HEADERS` and unknown control frames are read
//! and ignored (a `HEADERS` block still passes through the decompressor, whose state
//! spans the connection).
//!
//! Bounds: a frame is at most [`MAX_FRAME`] bytes, a header block at most
//! [`MAX_HEADER_BLOCK`] bytes once inflated and [`MAX_HEADERS`] pairs, a connection at
//! most [`MAX_STREAMS`] open streams; breaking one ends the connection with a `GOAWAY`.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The largest frame accepted (clients write at most 32 KiB at a time).
pub const MAX_FRAME: usize = 1 << 20;
/// The largest header block accepted, inflated.
pub const MAX_HEADER_BLOCK: usize = 64 << 10;
/// The most name/value pairs in one header block.
pub const MAX_HEADERS: usize = 100;
/// The most streams open at once on one connection.
pub const MAX_STREAMS: usize = 1024;
/// The largest data frame written (the size client-go's copies use).
const WRITE_CHUNK: usize = 32 << 10;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 1;

/// `RST_STREAM` status: the stream was refused (too many open).
pub const REFUSED_STREAM: u32 = 3;
/// `RST_STREAM` status: the stream is cancelled.
pub const CANCEL: u32 = 5;
/// `GOAWAY` status: a normal end.
pub const GOAWAY_OK: u32 = 0;
/// `GOAWAY` status: the peer broke the protocol.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// The SPDY/3 header compression dictionary (its specification, section 2.6.10.1): a list
/// of length-prefixed header names and values, then common strings run together.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// Header name/value pairs (names lower-case, as SPDY requires).
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A stream opened.
    SynStream {
        /// Its id (odd when the client opens it).
        id: u32,
        /// Opened half-closed: no data will follow.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// The answer to a `SynStream`.
    SynReply {
        /// The stream.
        id: u32,
        /// Half-closes the stream.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// A stream ended abnormally.
    RstStream {
        /// The stream.
        id: u32,
        /// Why.
        status: u32,
    },
    /// A ping, echoed by the receiver.
    Ping(u32),
    /// The connection is ending.
    GoAway {
        /// The last stream the sender accepted.
        last_id: u32,
        /// Why.
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        id: u32,
        /// Half-closes the stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Data on a stream.
    Data {
        /// The stream.
        id: u32,
        /// The sender's last data on it.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// A control frame read and ignored (`SETTINGS`, `WINDOW_UPDATE`, or unknown).
    Ignored(u16),
}

/// A broken frame: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SPDY protocol error: {}", self.0)
    }
}

fn err<T>(why: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(why.into()))
}

/// Reads frames; owns the connection's inflate state (one zlib stream for every header
/// block the peer sends).
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { inflate: Decompress::new(true) }
    }
}

impl Decoder {
    /// The next whole frame at the front of `buf` (removed from it), `None` until one has
    /// arrived whole.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if length > MAX_FRAME {
            return err(format!("a frame of {length} bytes (at most {MAX_FRAME})"));
        }
        if buf.len() < 8 + length {
            buf.reserve(8 + length - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut body = buf.split_to(length).freeze();
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if id == 0 {
                return err("data on stream 0");
            }
            return Ok(Some(Frame::Data { id, fin, data: body }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        let kind = u16::from_be_bytes([head[2], head[3]]);
        if version != VERSION {
            return err(format!("version {version} (3 is spoken)"));
        }
        let need = |n: usize| if body.len() < n { err(format!("control frame {kind} of {} bytes", body.len())) } else { Ok(()) };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(10)?;
                let id = body.get_u32() & 0x7fff_ffff;
                body.advance(6); // associated stream, priority, slot
                Frame::SynStream { id, fin, headers: self.headers(&body)? }
            }
            SYN_REPLY | HEADERS => {
                need(4)?;
                let id = body.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&body)?;
                if kind == SYN_REPLY {
                    Frame::SynReply { id, fin, headers }
                } else {
                    Frame::Headers { id, fin, headers }
                }
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream { id: body.get_u32() & 0x7fff_ffff, status: body.get_u32() }
            }
            PING => {
                need(4)?;
                Frame::Ping(body.get_u32())
            }
            GOAWAY => {
                need(8)?;
                Frame::GoAway { last_id: body.get_u32() & 0x7fff_ffff, status: body.get_u32() }
            }
            other => Frame::Ignored(other),
        }))
    }

    /// Inflate a header block (the zlib stream goes on across blocks) and read its pairs.
    fn headers(&mut self, mut input: &[u8]) -> Result<Headers, ProtocolError> {
        let mut out = Vec::with_capacity(256);
        let mut chunk = [0u8; 4096];
        // Until the block is taken and zlib holds nothing more of it.
        loop {
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self.inflate.decompress(input, &mut chunk, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            input = &input[used..];
            out.extend_from_slice(&chunk[..made]);
            if out.len() > MAX_HEADER_BLOCK {
                return err(format!("a header block of more than {MAX_HEADER_BLOCK} bytes"));
            }
            match result {
                Err(e) => match e.needs_dictionary() {
                    Some(_) => {
                        self.inflate.set_dictionary(&DICTIONARY).map_err(|e| ProtocolError(format!("header dictionary: {e}")))?;
                    }
                    None if input.is_empty() => break,
                    None => return err(format!("header block: {e}")),
                },
                Ok(_) if used == 0 && made == 0 => break,
                Ok(_) => {}
            }
        }
        parse_pairs(&out)
    }
}

fn parse_pairs(mut b: &[u8]) -> Result<Headers, ProtocolError> {
    fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], ProtocolError> {
        if b.len() < 4 {
            return err("a header block cut short");
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() - 4 < n {
            return err("a header block cut short");
        }
        let (s, rest) = b[4..].split_at(n);
        *b = rest;
        Ok(s)
    }
    if b.len() < 4 {
        return err("a header block cut short");
    }
    let count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    b = &b[4..];
    if count > MAX_HEADERS {
        return err(format!("{count} headers (at most {MAX_HEADERS})"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut b)?).to_ascii_lowercase();
        let value = String::from_utf8_lossy(take(&mut b)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// Writes frames; owns the connection's deflate state.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream.
        let _ = deflate.set_dictionary(&DICTIONARY);
        Encoder { deflate }
    }
}

impl Encoder {
    /// Append `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, body: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u32((u32::from(flags) << 24) | body.len() as u32);
            out.put_slice(body);
        };
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match frame {
            Frame::SynStream { id, fin: f, headers } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&[0; 6]);
                body.extend_from_slice(&self.compress(headers));
                control(out, SYN_STREAM, fin(*f), &body);
            }
            Frame::SynReply { id, fin: f, headers } | Frame::Headers { id, fin: f, headers } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&self.compress(headers));
                let kind = if matches!(frame, Frame::SynReply { .. }) { SYN_REPLY } else { HEADERS };
                control(out, kind, fin(*f), &body);
            }
            Frame::RstStream { id, status } => {
                let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, RST_STREAM, 0, &body);
            }
            Frame::Ping(n) => control(out, PING, 0, &n.to_be_bytes()),
            Frame::GoAway { last_id, status } => {
                let mut body = (last_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, GOAWAY, 0, &body);
            }
            Frame::Data { id, fin: f, data } => {
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32((u32::from(fin(*f)) << 24) | (data.len() as u32 & 0x00ff_ffff));
                out.put_slice(data);
            }
            Frame::Ignored(_) => {}
        }
    }

    fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (n, v) in headers {
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            // Writing into our own Vec cannot fail.
            let _ = self.deflate.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once all input is taken and the flush left room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// A stream the client opened.
pub struct Stream {
    /// Its id.
    pub id: u32,
    /// Its headers (names lower-case).
    pub headers: Headers,
    /// What the client sends on it; `None` once it has half-closed or reset it.
    pub data: mpsc::Receiver<Bytes>,
    /// Writes to the client on it.
    pub writer: StreamWriter,
}

impl Stream {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The connection closed before a write could be sent.
#[derive(Debug)]
pub struct Closed;

enum Out {
    Frame(Frame),
    /// Write a `GOAWAY`, flush, shut the write side, then stop.
    End(u32),
}

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Send `data` on the stream.
    pub async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(WRITE_CHUNK) {
            self.out.send(Out::Frame(Frame::Data { id: self.id, fin: false, data: Bytes::copy_from_slice(chunk) })).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-close the stream: nothing more will be sent on it.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Frame(Frame::Data { id: self.id, fin: true, data: Bytes::new() })).await;
    }

    /// Reset the stream.
    pub async fn reset(&self) {
        let _ = self.out.send(Out::Frame(Frame::RstStream { id: self.id, status: CANCEL })).await;
    }
}

/// A SPDY connection served on an upgraded connection: streams the client opens arrive on
/// [`Connection::accept`].
pub struct Connection {
    incoming: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Out>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Serve SPDY on `io`.
    pub fn serve<S>(io: S) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, mut write) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
        let (in_tx, incoming) = mpsc::channel::<Stream>(64);
        let writer = tokio::spawn(async move {
            let mut enc = Encoder::default();
            let mut buf = BytesMut::with_capacity(WRITE_CHUNK + 64);
            // Encode one item; true when it ends the connection.
            let mut take = |item: Out, buf: &mut BytesMut| match item {
                Out::Frame(f) => {
                    enc.encode(&f, buf);
                    false
                }
                Out::End(last_id) => {
                    enc.encode(&Frame::GoAway { last_id, status: GOAWAY_OK }, buf);
                    true
                }
            };
            while let Some(item) = out_rx.recv().await {
                let mut end = take(item, &mut buf);
                // Gather what is already queued into one write.
                while !end && buf.len() < WRITE_CHUNK {
                    match out_rx.try_recv() {
                        Ok(item) => end = take(item, &mut buf),
                        Err(_) => break,
                    }
                }
                if write.write_all(&buf).await.is_err() || write.flush().await.is_err() {
                    return;
                }
                if end {
                    let _ = write.shutdown().await;
                    return;
                }
                buf.clear();
            }
        });
        let reader = tokio::spawn(read_frames(read, out_tx.clone(), in_tx));
        Connection { incoming, out: out_tx, writer, reader }
    }

    /// The next stream the client opens; `None` once the connection has ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Resolves once the client has gone (its side of the connection ended); streams it
    /// opens meanwhile are refused.
    pub async fn ended(&mut self) {
        while let Some(s) = self.incoming.recv().await {
            s.writer.reset().await;
        }
    }

    /// End the connection: what was written is sent, then a `GOAWAY`, then the write side
    /// is shut.
    pub async fn close(self) {
        self.reader.abort();
        let _ = self.out.send(Out::End(0)).await;
        drop(self.out);
        let _ = self.writer.await;
    }
}

async fn read_frames<R: AsyncRead + Unpin>(mut read: R, out: mpsc::Sender<Out>, incoming: mpsc::Sender<Stream>) {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    loop {
        let frame = match dec.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!("{e}");
                let _ = out.send(Out::Frame(Frame::GoAway { last_id, status: GOAWAY_PROTOCOL_ERROR })).await;
                return;
            }
        };
        match frame {
            Frame::SynStream { id, fin, headers } => {
                // Client streams are odd and rise.
                if id % 2 == 0 || id <= last_id {
                    let _ = out.send(Out::Frame(Frame::GoAway { last_id, status: GOAWAY_PROTOCOL_ERROR })).await;
                    return;
                }
                last_id = id;
                streams.retain(|_, tx| !tx.is_closed());
                if streams.len() >= MAX_STREAMS {
                    let _ = out.send(Out::Frame(Frame::RstStream { id, status: REFUSED_STREAM })).await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(8);
                if !fin {
                    streams.insert(id, tx);
                }
                let _ = out.send(Out::Frame(Frame::SynReply { id, fin: false, headers: Vec::new() })).await;
                let stream = Stream { id, headers, data: rx, writer: StreamWriter { id, out: out.clone() } };
                if incoming.send(stream).await.is_err() {
                    return;
                }
            }
            Frame::Data { id, fin, data } => {
                if let Some(tx) = streams.get(&id) {
                    // A reader that went away no longer wants the data.
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        streams.remove(&id);
                    }
                }
                if fin {
                    streams.remove(&id);
                }
            }
            Frame::RstStream { id, .. } => {
                streams.remove(&id);
            }
            Frame::Ping(n) => {
                let _ = out.send(Out::Frame(Frame::Ping(n))).await;
            }
            Frame::GoAway { .. } => return,
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specifications() {
        assert_eq!(DICTIONARY.len(), 1423);
        // Its Adler-32, as every SPDY/3 header block's zlib header names it.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY.iter() {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_with_one_zlib_stream_per_direction() {
        let frames = vec![
            Frame::SynStream { id: 1, fin: false, headers: vec![("streamtype".into(), "error".into())] },
            Frame::SynStream { id: 3, fin: true, headers: vec![("streamtype".into(), "data".into()), ("port".into(), "8080".into())] },
            Frame::SynReply { id: 1, fin: false, headers: vec![] },
            Frame::Headers { id: 3, fin: false, headers: vec![("a".into(), "b\0c".into())] },
            Frame::Data { id: 3, fin: true, data: Bytes::from_static(b"hello") },
            Frame::RstStream { id: 5, status: CANCEL },
            Frame::Ping(7),
            Frame::GoAway { last_id: 3, status: GOAWAY_OK },
        ];
        let mut enc = Encoder::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire);
        }
        let mut dec = Decoder::default();
        // Fed a byte at a time: frames come out only whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn header_blocks_name_the_dictionary() {
        let mut enc = Encoder::default();
        let mut wire = BytesMut::new();
        enc.encode(&Frame::SynStream { id: 1, fin: false, headers: vec![("streamType".into(), "error".into())] }, &mut wire);
        // The zlib header names the dictionary: FDICT set, then its Adler-32.
        assert_eq!(&wire[18..20], &[0x78, 0xbb]);
        assert_eq!(&wire[20..24], &0xe3c6_a7c2u32.to_be_bytes());
        let f = Decoder::default().decode(&mut wire).unwrap().unwrap();
        assert_eq!(f, Frame::SynStream { id: 1, fin: false, headers: vec![("streamtype".into(), "error".into())] });
    }

    #[test]
    fn hostile_frames_end_with_an_error_not_a_panic() {
        let mut dec = Decoder::default();
        // Too large.
        let mut b = BytesMut::from(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(dec.decode(&mut b).is_err());
        // Another version.
        let mut b = BytesMut::from(&[0x80, 2, 0, 1, 0, 0, 0, 0][..]);
        assert!(dec.decode(&mut b).is_err());
        // A SYN_STREAM too short for its fields, and one whose block is not zlib.
        let mut b = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 2, 0, 0][..]);
        assert!(Decoder::default().decode(&mut b).is_err());
        let mut b = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..]);
        assert!(Decoder::default().decode(&mut b).is_err());
        // Data on stream 0.
        let mut b = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(Decoder::default().decode(&mut b).is_err());
        // A header block that claims more pairs than it holds, and more than allowed.
        assert!(parse_pairs(&[0, 0, 0, 2, 0, 0, 0, 1, b'a']).is_err());
        assert!(parse_pairs(&[0, 0, 1, 0]).is_err());
        assert!(parse_pairs(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_zlib_bomb_is_refused() {
        // A header block that inflates past the bound.
        let mut raw = vec![0, 0, 0, 1, 0, 0, 0, 1, b'a'];
        raw.extend_from_slice(&(1u32 << 20).to_be_bytes());
        raw.extend(std::iter::repeat_n(b'x', 1 << 20));
        let mut c = Compress::new(Compression::best(), true);
        let _ = c.set_dictionary(&DICTIONARY);
        let mut z = Vec::with_capacity(1 << 20);
        c.compress_vec(&raw, &mut z, FlushCompress::Sync).unwrap();
        let mut frame = BytesMut::new();
        frame.put_u16(0x8003);
        frame.put_u16(SYN_STREAM);
        frame.put_u32(10 + z.len() as u32);
        frame.put_u32(1);
        frame.put_slice(&[0; 6]);
        frame.put_slice(&z);
        let e = Decoder::default().decode(&mut frame).unwrap_err();
        assert!(e.0.contains("header block of more than"), "{e}");
    }
}
