//! Exec over SPDY/3.1 (`remotecommand`'s stream protocols): the client opens one stream
//! per channel, named by its `streamType` header (`error`, `stdin`, `stdout`, `stderr`,
//! `resize`); the server waits for all the request asked for, then copies. stdin ends
//! with the client's half-close; stdout and stderr end with ours; the error stream gets
//! the end (a `Status` in `v4.channel.k8s.io`, a text before it, nothing on success)
//! and the connection closes.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{end_status, end_text, ExecRequest, ExecSession};
use crate::spdy::{Connection, Stream};

/// The stream protocols served, best first (upstream's server order).
pub const PROTOCOLS: [&str; 4] = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// How long the client has to open its streams (kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve a started process on an upgraded connection speaking SPDY with `protocol`.
pub async fn serve<S>(io: S, protocol: &'static str, req: ExecRequest, mut session: ExecSession)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = Connection::serve(io);
    let wanted = 1
        + usize::from(req.stdin)
        + usize::from(req.stdout)
        + usize::from(req.stderr)
        + usize::from(req.tty && protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io");
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None::<Stream>, None::<Stream>, None::<Stream>, None::<Stream>, None::<Stream>);
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    let mut got = 0;
    while got < wanted {
        let Ok(Some(s)) = tokio::time::timeout_at(deadline, conn.accept()).await else {
            // The client never opened them all: nothing to serve.
            conn.close().await;
            return;
        };
        let slot = match s.header("streamtype") {
            Some("error") => &mut error,
            Some("stdin") => &mut stdin,
            Some("stdout") => &mut stdout,
            Some("stderr") => &mut stderr,
            Some("resize") => &mut resize,
            _ => {
                s.writer.reset().await;
                continue;
            }
        };
        if slot.is_none() {
            got += 1;
        }
        *slot = Some(s);
    }
    let copy_out = |reader: Option<Box<dyn AsyncRead + Send + Unpin>>, stream: Option<Stream>| {
        tokio::spawn(async move {
            let (Some(r), Some(s)) = (reader, stream) else { return };
            let ended = crate::pump::pump(r, |chunk| {
                let w = s.writer.clone();
                async move { w.write(&chunk).await.is_ok() }
            })
            .await;
            if ended {
                s.writer.close().await;
            }
        })
    };
    let stdout_task = copy_out(session.stdout.take(), stdout);
    let stderr_task = copy_out(session.stderr.take(), stderr);
    let stdin_task = tokio::spawn({
        let writer = session.stdin.take();
        async move {
            let (Some(mut w), Some(mut s)) = (writer, stdin) else { return };
            while let Some(data) = s.data.recv().await {
                if w.write_all(&data).await.is_err() {
                    return;
                }
            }
            // The client half-closed stdin: the process sees its end.
            let _ = w.shutdown().await;
        }
    });
    let resize_task = tokio::spawn({
        let resizer = session.resize.take();
        async move {
            let (Some(f), Some(mut s)) = (resizer, resize) else { return };
            // A stream of JSON objects, one per size change, not framed otherwise.
            let mut pending: Vec<u8> = Vec::new();
            while let Some(data) = s.data.recv().await {
                pending.extend_from_slice(&data);
                let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<Value>();
                let mut used = 0;
                while let Some(Ok(v)) = sizes.next() {
                    used = sizes.byte_offset();
                    let (width, height) = super::terminal_size(&v);
                    f(width, height);
                }
                pending.drain(..used);
                if pending.len() > 4096 {
                    return;
                }
            }
        }
    });
    // The session ends with the process, or with the client (which drops the process's
    // streams: an attached client detaches).
    let mut done = session.done;
    let end = tokio::select! {
        end = &mut done => end,
        _ = conn.ended() => {
            for t in [stdout_task, stderr_task, stdin_task, resize_task] {
                t.abort();
            }
            return;
        }
    };
    let _ = stdout_task.await;
    let _ = stderr_task.await;
    stdin_task.abort();
    resize_task.abort();
    if let Some(e) = error {
        let message = if protocol == "v4.channel.k8s.io" { Some(end_status(&req.command, &end).to_string()) } else { end_text(&req.command, &end) };
        if let Some(m) = message {
            let _ = e.writer.write(m.as_bytes()).await;
        }
        e.writer.close().await;
    }
    conn.close().await;
}
