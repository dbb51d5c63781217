//! Exec over WebSocket: the channel protocols of `k8s.io/apimachinery/pkg/util/remotecommand`.
//!
//! Every binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4
//! resize; in `v5.channel.k8s.io`, 255 closes the channel named by the next byte). The
//! `base64.channel.k8s.io` forms send text messages: the channel as an ASCII digit, then
//! base64. An empty message on the lowest output channel says the stream is ready; the
//! end is a `Status` on the error channel (`v4`, `v5`: `Success`, or `NonZeroExitCode`
//! with the code as the `ExitCode` cause) or an error text (`channel.k8s.io`).

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};

use super::{end_status, end_text, ExecRequest, ExecSession};

/// The channel protocols served, best first.
pub const PROTOCOLS: [&str; 5] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io"];

/// A negotiated channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// `v5`: the close channel.
    pub v5: bool,
    /// `v4`/`v5`: the error channel carries a `Status`.
    pub status: bool,
    /// Text messages with base64 data.
    pub base64: bool,
    name: &'static str,
}

impl Protocol {
    /// The first protocol of the client's `Sec-WebSocket-Protocol` list served here.
    pub fn negotiate(offered: &str) -> Option<Protocol> {
        offered.split(',').map(str::trim).find_map(|p| {
            let name = PROTOCOLS.iter().copied().find(|x| *x == p)?;
            Some(Protocol { v5: name.starts_with("v5."), status: name.starts_with("v4.") || name.starts_with("v5."), base64: name.contains("base64"), name })
        })
    }
    /// Its name, for the `Sec-WebSocket-Protocol` answer.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Largest message taken from a client (stdin chunks, resizes).
const MAX_MESSAGE: usize = 1 << 20;

/// A message on `channel`: binary with the channel byte first, or (`base64`) text with
/// the channel as a digit, then base64.
pub fn frame(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + channel) as char);
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(s.into())
    } else {
        let mut b = Vec::with_capacity(1 + data.len());
        b.push(channel);
        b.extend_from_slice(data);
        Message::Binary(b.into())
    }
}

/// What a client's message carries, channel byte first (a base64 text message decoded),
/// or `None` for a message that carries no channel data (pings, or text in the binary
/// protocols).
pub fn channel_data(m: Message, base64: bool) -> Option<Vec<u8>> {
    match m {
        Message::Binary(b) => Some(b.to_vec()),
        Message::Text(t) if base64 => {
            let t = t.as_str();
            let ch = t.bytes().next().filter(|c| c.is_ascii_digit())?;
            let mut d = base64::engine::general_purpose::STANDARD.decode(&t[1..]).ok()?;
            d.insert(0, ch - b'0');
            Some(d)
        }
        _ => None,
    }
}

/// Bridge an upgraded connection and a started process until the process ends and its
/// output is sent, or the client goes.
pub async fn serve<S>(io: S, protocol: Protocol, req: ExecRequest, mut session: ExecSession)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(16);
    // Ready: an empty message on the lowest output channel.
    let first = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.send(frame(protocol.base64, first, &[])).await;
    let pump = |reader: Option<Box<dyn AsyncRead + Send + Unpin>>, channel: u8| {
        let tx = out_tx.clone();
        tokio::spawn(async move {
            let Some(r) = reader else { return };
            crate::pump::pump(r, |chunk| {
                let tx = tx.clone();
                async move { tx.send(frame(protocol.base64, channel, &chunk)).await.is_ok() }
            })
            .await;
        })
    };
    let stdout_task = pump(session.stdout.take(), STDOUT);
    let stderr_task = pump(session.stderr.take(), STDERR);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    let mut stdin = session.stdin.take();
    let resize = session.resize.take();
    let mut done = session.done;
    let end = loop {
        tokio::select! {
            end = &mut done => break Some(end),
            msg = source.next() => match msg {
                Some(Ok(Message::Close(_))) => break None,
                Some(Ok(m)) => {
                    let Some(data) = channel_data(m, protocol.base64) else { continue };
                    let Some((&channel, payload)) = data.split_first() else { continue };
                    match channel {
                        STDIN => {
                            if let Some(w) = stdin.as_mut() {
                                if w.write_all(payload).await.is_err() {
                                    stdin = None;
                                }
                            }
                        }
                        RESIZE => {
                            if let (Some(f), Ok(v)) = (&resize, serde_json::from_slice::<Value>(payload)) {
                                let (width, height) = super::terminal_size(&v);
                                f(width, height);
                            }
                        }
                        CLOSE if protocol.v5 && payload.first() == Some(&STDIN) => {
                            if let Some(mut w) = stdin.take() {
                                let _ = w.shutdown().await;
                            }
                        }
                        _ => {}
                    }
                }
                // The client is gone.
                Some(Err(_)) | None => break None,
            },
        }
    };
    drop(stdin);
    let Some(end) = end else {
        stdout_task.abort();
        stderr_task.abort();
        return;
    };
    // All the output first, then the status.
    let _ = stdout_task.await;
    let _ = stderr_task.await;
    if protocol.status {
        let status = end_status(&req.command, &end);
        let _ = out_tx.send(frame(protocol.base64, ERROR, status.to_string().as_bytes())).await;
    } else if let Some(text) = end_text(&req.command, &end) {
        let _ = out_tx.send(frame(protocol.base64, ERROR, text.as_bytes())).await;
    }
    drop(out_tx);
    if let Ok(Some(mut sink)) = writer.await {
        // A normal closure (1000): clients take it for the end of every stream.
        let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    }
}
