//! Container logs in the CRI format kubelet reads: one line per record,
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <text>`, `P` marking a piece of a longer line
//! (split at [`MAX_LINE`]) and `F` its end. Files are rotated by size, keeping
//! [`KEEP`] files (`0.log`, `0.log.1`, …), as kubelet's `containerLogMaxSize` 10 MiB and
//! `containerLogMaxFiles` 5 default to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest text in one record; longer lines are split into `P` records (containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;
/// Size at which a log file is rotated.
pub const MAX_SIZE: u64 = 10 * 1024 * 1024;
/// How many files are kept, the live one included.
pub const KEEP: usize = 5;

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// RFC 3339 with nanoseconds, UTC (`2006-01-02T15:04:05.999999999Z` without trimming, as
/// containerd writes).
pub fn timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second(), t.nanosecond())
}

/// Appends records to a container's log file, rotating it by size.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
}

impl LogWriter {
    /// Open (append to) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        Self::with_max_size(path, MAX_SIZE)
    }

    /// Open with another rotation size (tests).
    pub fn with_max_size(path: &Path, max_size: u64) -> std::io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path: path.to_path_buf(), file, size, max_size })
    }

    /// Write one line of output (without its newline); `complete` is false for the last
    /// piece of output that ended without a newline.
    pub fn line(&mut self, stream: Stream, text: &[u8], complete: bool) -> std::io::Result<()> {
        let now = timestamp(time::OffsetDateTime::now_utc());
        let mut chunks = text.chunks(MAX_LINE).peekable();
        if text.is_empty() {
            return self.record(&now, stream, if complete { "F" } else { "P" }, b"");
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.record(&now, stream, if last && complete { "F" } else { "P" }, chunk)?;
        }
        Ok(())
    }

    fn record(&mut self, time: &str, stream: Stream, tag: &str, text: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(text.len() + 48);
        buf.extend_from_slice(time.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(stream.name().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(tag.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(text);
        buf.push(b'\n');
        if self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(KEEP - 1));
        for n in (1..KEEP - 1).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Copy `input` into `writer` as records of `stream` until it ends.
pub fn copy_lines(mut input: impl std::io::Read, stream: Stream, writer: &std::sync::Mutex<LogWriter>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + i];
            if let Ok(mut w) = writer.lock() {
                let _ = w.line(stream, line, true);
            }
            start += i + 1;
        }
        pending.drain(..start);
        // A line longer than a record is written in pieces as it arrives.
        if pending.len() >= MAX_LINE {
            if let Ok(mut w) = writer.lock() {
                let _ = w.line(stream, &pending[..MAX_LINE], false);
            }
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        if let Ok(mut w) = writer.lock() {
            let _ = w.line(stream, &pending, false);
        }
    }
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its time as written.
    pub time: &'a str,
    /// Its time, parsed.
    pub at: time::OffsetDateTime,
    /// stdout or stderr.
    pub stream: Stream,
    /// Whether this record ends a line.
    pub complete: bool,
    /// The text.
    pub text: &'a [u8],
}

/// Parse one line of a log file (without its newline); `None` for a malformed line.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time_bytes = parts.next()?;
    let time = std::str::from_utf8(time_bytes).ok()?;
    let at = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let complete = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let text = parts.next().unwrap_or(b"");
    Some(Record { time, at, stream, complete, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_rotate_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let w = std::sync::Mutex::new(LogWriter::with_max_size(&path, 200).unwrap());
        let long = vec![b'x'; MAX_LINE + 5];
        let mut input = b"hello\nworld\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nno newline");
        copy_lines(&input[..], Stream::Stdout, &w);
        // The long line rotated the small file: the parts are spread over the files kept.
        let mut records = Vec::new();
        for f in [path.with_extension("log.2"), path.with_extension("log.1"), path.clone()] {
            if let Ok(text) = std::fs::read(&f) {
                for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let r = parse(l).unwrap();
                    records.push((r.complete, r.text.to_vec()));
                }
            }
        }
        assert_eq!(records[0], (true, b"hello".to_vec()));
        assert_eq!(records[1], (true, b"world".to_vec()));
        assert_eq!(records[2], (false, vec![b'x'; MAX_LINE]));
        assert_eq!(records[3], (true, vec![b'x'; 5]));
        assert_eq!(records[4], (false, b"no newline".to_vec()));
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"2024-01-01T00:00:00.000000000Z stdin F x").is_none());
    }
}
