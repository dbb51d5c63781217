//! The audit log: one JSON line per request in the `audit.k8s.io/v1` Event shape, at
//! Metadata level (who, what, when, outcome; never request or response bodies, never
//! credentials). Lines are written by a dedicated thread so requests never wait on the
//! file.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde_json::Value;

/// A handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Vec<u8>>,
}

impl AuditLog {
    /// Append to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new().name("nanokube-audit".into()).spawn(move || {
            while let Ok(line) = rx.recv() {
                let mut buf = line;
                // Drain what is queued, then write and flush once.
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(&more);
                }
                if file.write_all(&buf).and_then(|_| file.flush()).is_err() {
                    tracing::warn!("audit log write failed");
                }
            }
        })?;
        Ok(AuditLog { tx })
    }

    /// Record one event.
    pub fn record(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).expect("serialize");
        line.push(b'\n');
        let _ = self.tx.send(line);
    }
}
