//! A store watch that lasts: what every controller, the service proxy and the DNS
//! server run on.

use std::sync::Arc;

use crate::{Backend, Event, Revision};
use tokio::sync::watch;

/// What a lasting watch hands its controller.
pub enum Change<'a> {
    /// One change under the prefix.
    Event(&'a Event),
    /// Events were missed (the watch fell behind the retained history) and the watch goes
    /// on from the newest revision: the controller looks at everything again.
    Resync,
}

/// Watch `prefix` after `from`, handing each change to `on_change`, until `shutdown`
/// turns true, the store closes, or `on_change` returns false.
pub async fn follow(
    store: Arc<dyn Backend>,
    prefix: &str,
    mut from: Revision,
    mut shutdown: watch::Receiver<bool>,
    mut on_change: impl FnMut(Change<'_>) -> bool,
) {
    loop {
        if let Ok(mut w) = store.watch(prefix, from) {
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    ev = w.next() => match ev {
                        Some(Ok(ev)) => {
                            if !on_change(Change::Event(&ev)) {
                                return;
                            }
                        }
                        Some(Err(_)) => break,
                        None => return,
                    }
                }
            }
        }
        from = store.current_revision();
        if !on_change(Change::Resync) {
            return;
        }
    }
}
