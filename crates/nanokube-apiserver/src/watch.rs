//! The body of a watch response: the initial events, then the store's events as they
//! come, each framed as one line of JSON (`{"type":…,"object":…}`), bookmarks, and the
//! end at the watch's timeout.
//!
//! The body polls the store's watch itself: hyper's task for the response wakes on the
//! store's event and writes it, with no task or channel in between. With a thousand
//! watchers of one collection, that is a thousand task wake-ups and channel hops less
//! per event than a task per watch feeding the body through a channel. A client that
//! goes away drops the body, and with it the watch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use nanokube_api::resources::ResourceDef;
use nanokube_api::{meta, ApiError};
use nanokube_store::Revision;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::coalesce::OpenWatch;
use crate::http::Output;
use crate::metrics::WatchGuard;
use crate::registry::{Obj, ObjectWatch};
use crate::tables::{partial_metadata_json, write_table, Include, TableSpec};

/// Frames events for one watch in the representation the client asked for.
pub(crate) struct EventEncoder {
    pub def: &'static ResourceDef,
    pub out: Output,
    pub include: Include,
    /// The CRD version whose printer columns a custom resource's Table rows show.
    pub custom: Option<std::sync::Arc<nanokube_api::crd::CrdVersion>>,
    /// Table watches send column definitions with the first row only.
    pub first_table: bool,
}

impl EventEncoder {
    /// One event line.
    pub fn event(&mut self, ty: &str, obj: &Obj) -> Bytes {
        match self.out {
            Output::Table(mv) => {
                let spec = TableSpec { def: self.def, custom: self.custom.as_deref(), include: self.include, meta_version: mv, now: OffsetDateTime::now_utc() };
                let meta = json!({"resourceVersion": meta::resource_version(obj)});
                let table = write_table(&spec, std::slice::from_ref(obj), &meta, self.first_table);
                self.first_table = false;
                event_line(ty, &table)
            }
            Output::PartialMetadata(mv) => event_line(ty, &partial_metadata_json(obj, mv)),
            // Plain JSON: the object's encoding, written straight into the line.
            _ => {
                let mut line = Vec::with_capacity(obj.json_len() + 32);
                event_line_into(&mut line, ty, |l| obj.write_json(l));
                Bytes::from(line)
            }
        }
    }

    /// A BOOKMARK at `rv`; `initial_end` marks the end of `sendInitialEvents`.
    pub fn bookmark(&self, rv: Revision, initial_end: bool) -> Bytes {
        let mut m = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(&json!({"type": "BOOKMARK", "object": {"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": m}}))
    }
}

/// `{"type":ty,"object":object}` and a newline, `object` being JSON already.
fn event_line(ty: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    event_line_into(&mut line, ty, |l| l.extend_from_slice(object));
    Bytes::from(line)
}

/// [`event_line`] into `line`, the object written by `object`.
fn event_line_into(line: &mut Vec<u8>, ty: &str, object: impl FnOnce(&mut Vec<u8>)) {
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(ty.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    object(line);
    line.extend_from_slice(b"}\n");
}

/// An ERROR event carrying `e`'s Status.
pub(crate) fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.to_status()}))
}

fn line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

type NextEvent = Option<Result<(&'static str, Obj), ApiError>>;

/// The store's watch, lent to the future waiting for its next event.
type Waiting = Pin<Box<dyn Future<Output = (ObjectWatch, NextEvent)> + Send + Sync>>;

/// A watch response body.
pub(crate) struct WatchBody {
    encoder: EventEncoder,
    initial: std::vec::IntoIter<Obj>,
    initial_end: Option<Revision>,
    /// What ends the watch at once: the ERROR event for a start revision that is gone.
    expired: Option<Bytes>,
    watch: Option<ObjectWatch>,
    waiting: Option<Waiting>,
    /// The revision bookmarks report while the watch is lent out.
    last_revision: Revision,
    deadline: Pin<Box<tokio::time::Sleep>>,
    bookmarks: Option<tokio::time::Interval>,
    done: bool,
    /// Counted as open (metrics, and the connection's coalescing) while the body lives.
    _guard: (WatchGuard, OpenWatch),
}

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

impl WatchBody {
    /// A body sending `initial` as ADDED events, then (with `initial_end`) the
    /// initial-events-end bookmark at `start`, then `watch`'s events until `timeout`.
    /// Without a watch (its start revision is gone) it ends with the ERROR event given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        encoder: EventEncoder,
        initial: Vec<Obj>,
        initial_end: bool,
        watch: Result<ObjectWatch, Bytes>,
        start: Revision,
        timeout: Duration,
        bookmarks: bool,
        guard: (WatchGuard, OpenWatch),
    ) -> Self {
        let (watch, expired) = match watch {
            Ok(w) => (Some(w), None),
            Err(line) => (None, Some(line)),
        };
        WatchBody {
            encoder,
            initial: initial.into_iter(),
            initial_end: initial_end.then_some(start),
            expired,
            watch,
            waiting: None,
            last_revision: start,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            bookmarks: bookmarks.then(|| tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY)),
            done: false,
            _guard: guard,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(obj) = self.initial.next() {
            return Poll::Ready(Some(self.encoder.event("ADDED", &obj)));
        }
        if let Some(rv) = self.initial_end.take() {
            return Poll::Ready(Some(self.encoder.bookmark(rv, true)));
        }
        if let Some(line) = self.expired.take() {
            self.done = true;
            return Poll::Ready(Some(line));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        if let Some(tick) = &mut self.bookmarks {
            if tick.poll_tick(cx).is_ready() {
                return Poll::Ready(Some(self.encoder.bookmark(self.last_revision, false)));
            }
        }
        let waiting = match &mut self.waiting {
            Some(w) => w,
            None => {
                let Some(mut watch) = self.watch.take() else {
                    self.done = true;
                    return Poll::Ready(None);
                };
                self.waiting.insert(Box::pin(async move {
                    let next = watch.next().await;
                    (watch, next)
                }))
            }
        };
        let Poll::Ready((watch, next)) = waiting.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        self.waiting = None;
        self.last_revision = watch.last_revision();
        self.watch = Some(watch);
        match next {
            Some(Ok((ty, obj))) => Poll::Ready(Some(self.encoder.event(ty, &obj))),
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(error_event(&e)))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut().poll_next(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
