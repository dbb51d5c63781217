//! `pods/log` served from the node's CRI log files, as kubelet's `/containerLogs` does:
//! the current instance (`<restartCount>.log`) or, with `previous`, the one before;
//! `sinceSeconds`/`sinceTime`, `tailLines`, `timestamps`, `limitBytes`, and `follow` until
//! the instance ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nanokube_api::ApiError;
use nanokube_apiserver::pod_logs::{LogOptions, NodeLogs};
use nanokube_runtime::cri_log;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::PodRuntime;

/// The node's log server.
pub struct Logs(pub Arc<PodRuntime>);

impl nanokube_apiserver::node_link::NamedNode for Logs {
    fn node_name(&self) -> &str {
        &self.0.node
    }
}

impl NodeLogs for Logs {
    fn open(&self, pod: &Value, opts: &LogOptions) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let (ns, name, uid) = (s("/metadata/namespace"), s("/metadata/name"), s("/metadata/uid"));
        let c = &opts.container;
        let status = super::named(pod, &super::STATUS_LISTS, c);
        let restarts = status.and_then(|st| st.get("restartCount")).and_then(Value::as_u64).unwrap_or(0) as u32;
        let ever_ran = status.is_some_and(|st| st.get("containerID").is_some());
        if !ever_ran {
            let reason = status.and_then(|st| st.pointer("/state/waiting/reason")).and_then(Value::as_str).unwrap_or("ContainerCreating");
            return Err(ApiError::bad_request(format!("container \"{c}\" in pod \"{name}\" is waiting to start: {reason}")));
        }
        let attempt = if opts.previous {
            if restarts == 0 {
                return Err(ApiError::bad_request(format!("previous terminated container \"{c}\" in pod \"{name}\" not found")));
            }
            restarts - 1
        } else {
            restarts
        };
        let file = self.0.logs_dir().join(format!("{ns}_{name}_{uid}")).join(c).join(format!("{attempt}.log"));
        let exit_file = self.0.pods_dir().join(&uid).join("containers").join(c).join(attempt.to_string()).join("exit.json");
        let follow = opts.follow && !opts.previous;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(stream(file, exit_file, opts.clone(), follow, tx));
        Ok(rx)
    }
}

/// How a log is written out: which records pass, how they are printed, where it stops.
struct Printer {
    opts: LogOptions,
    since: Option<time::OffsetDateTime>,
    sent: i64,
    at_line_start: bool,
}

impl Printer {
    /// Print `lines` (log file lines) into one chunk and send it; false when the stream
    /// is over (the byte limit reached, or the client gone).
    async fn send<'a>(&mut self, lines: impl Iterator<Item = &'a [u8]>, tx: &mpsc::Sender<Bytes>) -> bool {
        let mut chunk = Vec::new();
        let mut more = true;
        for line in lines {
            let Some(rec) = cri_log::parse(line) else { continue };
            match self.render(&rec) {
                Some(out) => chunk.extend_from_slice(&out),
                None => {
                    more = false;
                    break;
                }
            }
        }
        if chunk.is_empty() {
            return more;
        }
        tx.send(Bytes::from(chunk)).await.is_ok() && more
    }

    /// The text for one record, or `None` when the byte limit is reached.
    fn render(&mut self, r: &cri_log::Record<'_>) -> Option<Vec<u8>> {
        if self.since.is_some_and(|s| r.at < s) {
            return Some(Vec::new());
        }
        let mut out = Vec::with_capacity(r.text.len() + 40);
        if self.opts.timestamps && self.at_line_start {
            out.extend_from_slice(r.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.text);
        if r.complete {
            out.push(b'\n');
        }
        self.at_line_start = r.complete;
        if let Some(limit) = self.opts.limit_bytes {
            let room = (limit - self.sent).max(0) as usize;
            if room == 0 {
                return None;
            }
            out.truncate(room);
        }
        self.sent += out.len() as i64;
        Some(out)
    }
}

async fn stream(file: PathBuf, exit_file: PathBuf, opts: LogOptions, follow: bool, tx: mpsc::Sender<Bytes>) {
    let since = opts.since_time.or_else(|| opts.since_seconds.map(|s| time::OffsetDateTime::now_utc() - time::Duration::seconds(s)));
    let mut printer = Printer { opts: opts.clone(), since, sent: 0, at_line_start: true };
    let Ok(mut f) = tokio::fs::File::open(&file).await else { return };
    let mut data = Vec::new();
    if f.read_to_end(&mut data).await.is_err() {
        return;
    }
    // Whole records only; a partial last line waits for its end.
    let complete_len = data.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    let mut offset = complete_len as u64;
    let records: Vec<&[u8]> = data[..complete_len].split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let first = match opts.tail_lines {
        Some(n) => {
            // The last n lines: a line is the records up to and including an F.
            let mut lines = 0i64;
            let mut start = records.len();
            for (i, r) in records.iter().enumerate().rev() {
                let is_end = cri_log::parse(r).is_some_and(|p| p.complete);
                if is_end {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                start = i;
            }
            if n == 0 {
                records.len()
            } else {
                start
            }
        }
        None => 0,
    };
    if !printer.send(records[first..].iter().copied(), &tx).await {
        return;
    }
    if !follow {
        return;
    }
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let ended = exit_file.exists();
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut more = Vec::new();
        match f.read_to_end(&mut more).await {
            Ok(_) => {}
            Err(_) => return,
        }
        if more.is_empty() && tx.is_closed() {
            return;
        }
        offset += more.len() as u64;
        pending.extend_from_slice(&more);
        let upto = pending.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        if !printer.send(pending[..upto].split(|&b| b == b'\n').filter(|l| !l.is_empty()), &tx).await {
            return;
        }
        pending.drain(..upto);
        if ended || !file.exists() {
            return;
        }
        // A rotated log starts over in a new file.
        if tokio::fs::metadata(&file).await.is_ok_and(|m| m.len() < offset) {
            match tokio::fs::File::open(&file).await {
                Ok(nf) => {
                    f = nf;
                    offset = 0;
                }
                Err(_) => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
