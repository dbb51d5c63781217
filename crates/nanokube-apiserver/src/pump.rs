//! Copying what a process or a connection writes to a client, chunk by chunk: the read
//! loop exec's output channels and streams and port-forward's connections share.

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The size of each read (the size client-go's copies use).
pub const CHUNK: usize = 32 * 1024;

/// Read `reader` to its end (an error ends it too), handing each chunk to `send`, which
/// answers false once the client is gone. True when the reader ended, false when the
/// client did.
pub async fn pump<R, F, Fut>(mut reader: R, mut send: F) -> bool
where
    R: AsyncRead + Unpin,
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if !send(Bytes::copy_from_slice(&buf[..n])).await {
                    return false;
                }
            }
        }
    }
}
