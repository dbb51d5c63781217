//! A write buffer under an HTTP/2 connection that lets the frames of many streams leave
//! in one TLS write.
//!
//! hyper drives each HTTP/2 response body from its own task, and every frame a body
//! hands over wakes the connection's task, which tokio runs next (the woken task takes
//! the worker's "LIFO slot"). So when one store event reaches fifty watches on one
//! connection, the connection writes and flushes fifty times: fifty TLS records, fifty
//! `writev` calls, fifty TCP segments for the client to take apart. [`Coalesce`] keeps
//! what the connection writes, and when the connection flushes, writes it only once the
//! tasks runnable meanwhile (the other streams' bodies) have had their turn and added
//! their frames (`tokio::task::yield_now`'s wake, which then polls the connection to
//! flush again). Nothing waits on a timer: with nothing else runnable, the turn comes at
//! once. The connection is never held up: the deferred flush answers `Ready`, so it goes
//! on reading and queueing while its bytes wait for their turn.
//!
//! Only HTTP/2 connections with a watch open coalesce: that is where many streams write
//! at once. An HTTP/1.1 connection carries one response at a time, and a connection of
//! plain requests gains nothing from waiting, so their writes pass straight through, as
//! they did before. (Waiting there also changes what a client sees: a response to a
//! request whose body is still coming is followed by a `RST_STREAM(NO_ERROR)`, and
//! curl 7.88 reports the two arriving in one read as a failed request.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many buffered bytes a write first drains the buffer (backpressure).
const HIGH_WATER: usize = 256 * 1024;

/// A drained buffer keeps its allocation up to this size.
const KEEP_CAPACITY: usize = 64 * 1024;

/// An IO whose writes, while its connection has watches open, are buffered, and whose
/// flushes write them only after the runtime's other runnable tasks had their turn.
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    /// The connection's open watches (HTTP/2 only): writes coalesce while there are any.
    watches: Option<OpenWatches>,
    /// Set while a flush waits for its turn: turns true when the turn has come.
    turn: Option<Arc<Turn>>,
}

/// The waker handed to `yield_now`: notes that the turn came, then wakes the task.
struct Turn {
    came: AtomicBool,
    task: Waker,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.came.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<T> Coalesce<T> {
    /// Wrap `inner`. With `watches` (an HTTP/2 connection's count), writes coalesce
    /// while any watch is open; without, reads and writes pass straight through.
    pub fn new(inner: T, watches: Option<OpenWatches>) -> Self {
        Coalesce { inner, buf: Vec::new(), written: 0, watches, turn: None }
    }

    fn coalescing(&self) -> bool {
        self.watches.as_ref().is_some_and(OpenWatches::any)
    }
}

/// How many watches a connection has open, shared by its [`Coalesce`] and its watch
/// responses.
#[derive(Clone, Debug, Default)]
pub struct OpenWatches(Arc<AtomicUsize>);

impl OpenWatches {
    /// Count one more open watch, until the guard is dropped.
    pub fn open(&self) -> OpenWatch {
        self.0.fetch_add(1, Ordering::Relaxed);
        OpenWatch(self.0.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// One open watch of a connection; dropping it closes the count.
#[derive(Debug)]
pub struct OpenWatch(Arc<AtomicUsize>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Write everything buffered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            // A burst's buffer is not kept for the connection's life.
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        // Bytes already buffered go first, whether or not the connection still coalesces.
        if !self.coalescing() && self.buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if !self.coalescing() && self.buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.watches.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.coalescing() && !self.buf.is_empty() {
            match &self.turn {
                None => {
                    // `yield_now` wakes its waker once the runtime has run the tasks
                    // runnable now (the bodies whose frames would miss this write) or a
                    // few dozen of them. Until then the bytes wait here and the
                    // connection goes on as if flushed: when the wake polls it again, it
                    // flushes again, and this time they go.
                    let turn = Arc::new(Turn { came: AtomicBool::new(false), task: cx.waker().clone() });
                    let waker = Waker::from(turn.clone());
                    let mut yielding = std::pin::pin!(tokio::task::yield_now());
                    if yielding.as_mut().poll(&mut Context::from_waker(&waker)).is_pending() {
                        self.turn = Some(turn);
                        return Poll::Ready(Ok(()));
                    }
                }
                Some(turn) if !turn.came.load(Ordering::Acquire) => return Poll::Ready(Ok(())),
                Some(_) => {}
            }
        }
        ready!(self.poll_drain(cx))?;
        self.turn = None;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether the peer has bytes to read, without waiting.
    fn readable(peer: &mut tokio::io::DuplexStream) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let waker = Waker::noop();
        matches!(Pin::new(peer).poll_read(&mut Context::from_waker(waker), &mut buf), Poll::Ready(Ok(())))
    }

    /// A coalescing pipe with one watch open: (writer, peer, the watch).
    fn watched(capacity: usize) -> (Coalesce<tokio::io::DuplexStream>, tokio::io::DuplexStream, OpenWatch) {
        let (a, b) = tokio::io::duplex(capacity);
        let watches = OpenWatches::default();
        let watch = watches.open();
        (Coalesce::new(a, Some(watches)), b, watch)
    }

    #[tokio::test]
    async fn a_flush_writes_once_the_other_tasks_had_their_turn_with_what_came_meanwhile() {
        let (mut io, mut b, _watch) = watched(1 << 20);
        io.write_all(b"one ").await.unwrap();
        io.write_all(b"two ").await.unwrap();
        // The flush answers at once, and the bytes wait for the runtime's turn.
        io.flush().await.unwrap();
        io.flush().await.unwrap();
        assert!(!readable(&mut b));
        io.write_all(b"three").await.unwrap();
        // Other tasks run (the runtime's turn comes); the next flush writes it all.
        tokio::task::yield_now().await;
        io.flush().await.unwrap();
        let mut got = vec![0u8; 13];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one two three");
        // The turn is spent: the next write waits for the next one.
        io.write_all(b"four").await.unwrap();
        io.flush().await.unwrap();
        assert!(!readable(&mut b));
        tokio::task::yield_now().await;
        io.flush().await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"four");
    }

    #[tokio::test]
    async fn without_open_watches_writes_pass_straight_through() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let watches = OpenWatches::default();
        let mut io = Coalesce::new(a, Some(watches.clone()));
        io.write_all(b"now").await.unwrap();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"now");
        // While a watch is open, writes wait; once it closes, what waited goes first.
        let watch = watches.open();
        io.write_all(b"held ").await.unwrap();
        io.flush().await.unwrap();
        assert!(!readable(&mut b));
        drop(watch);
        io.write_all(b"then").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 9];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"held then");
        // Not HTTP/2: nothing is ever held.
        let (a, _b) = tokio::io::duplex(64);
        let mut plain = Coalesce::new(a, None);
        plain.write_all(b"x").await.unwrap();
        assert!(plain.buf.is_empty());
    }

    #[tokio::test]
    async fn a_full_buffer_drains_before_taking_more() {
        let (mut io, mut b, _watch) = watched(1 << 22);
        let chunk = vec![7u8; HIGH_WATER];
        io.write_all(&chunk).await.unwrap();
        io.write_all(b"x").await.unwrap();
        // The first chunk went out when the second write found the buffer full.
        let mut got = vec![0u8; HIGH_WATER];
        b.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&x| x == 7));
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"x");
    }
}
