//! A plugin's own log: lines from `log.log` and from the guest's stdout and stderr, size-capped,
//! rate-limited per call and kept in a bounded ring for the operator.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::limits::PluginLimits;
use keel_kernel::engine::Clock;
use keel_kernel::ids::escape_unprintable;

/// Log lines kept per instance for inspection; older lines are forgotten first.
pub const LOG_LINES_RETAINED_MAX: usize = 256;

/// How important a line is, as the plugin said (stdout is `Info`, stderr `Warn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Fine-grained tracing.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// One line of a plugin's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The plugin's level.
    pub level: LogLevel,
    /// The text, at most the configured size (a truncated line ends with `…[truncated]`).
    pub message: String,
    /// Kernel time of the line, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// What happened to a plugin's log so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounters {
    /// Lines accepted.
    pub lines: u64,
    /// Lines cut to the size cap.
    pub truncated: u64,
    /// Lines dropped because a call went over its line budget.
    pub dropped: u64,
}

/// The log of one instance, shared by the `log` import and the stdout/stderr pipes.
pub(crate) struct PluginLog {
    lines: VecDeque<LogLine>,
    counters: LogCounters,
    lines_this_call: u32,
    call_seq_seen: u64,
    call_seq: Arc<AtomicU64>,
    lines_per_call_max: u32,
    message_bytes_max: usize,
    clock: Arc<dyn Clock>,
    label: String,
}

impl PluginLog {
    pub fn new(
        label: String,
        limits: &PluginLimits,
        clock: Arc<dyn Clock>,
        call_seq: Arc<AtomicU64>,
    ) -> Self {
        PluginLog {
            lines: VecDeque::new(),
            counters: LogCounters::default(),
            lines_this_call: 0,
            call_seq_seen: u64::MAX,
            call_seq,
            lines_per_call_max: limits.log_lines_per_call_max,
            message_bytes_max: limits.log_message_bytes_max,
            clock,
            label,
        }
    }

    pub fn push(&mut self, level: LogLevel, message: &str, at_ms: i64) {
        let call_seq = self.call_seq.load(Ordering::Relaxed);
        if call_seq != self.call_seq_seen {
            self.call_seq_seen = call_seq;
            self.lines_this_call = 0;
        }
        if self.lines_this_call >= self.lines_per_call_max {
            self.counters.dropped += 1;
            return;
        }
        self.lines_this_call += 1;
        // Shown in terminals, logs and pages: nothing in it may forge a line or hide text.
        let message = escape_unprintable(&self.capped(message)).into_owned();
        tracing::debug!(target: "keel::plugin", plugin = %self.label, ?level, "{message}");
        if self.lines.len() == LOG_LINES_RETAINED_MAX {
            self.lines.pop_front();
        }
        self.lines.push_back(LogLine {
            level,
            message,
            at_ms,
        });
        self.counters.lines += 1;
    }

    fn capped(&mut self, message: &str) -> String {
        if message.len() <= self.message_bytes_max {
            return message.to_string();
        }
        self.counters.truncated += 1;
        let mut end = self.message_bytes_max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        format!(
            "{}…[truncated from {} bytes]",
            &message[..end],
            message.len()
        )
    }

    pub fn lines(&self) -> Vec<LogLine> {
        self.lines.iter().cloned().collect()
    }

    pub fn counters(&self) -> LogCounters {
        self.counters
    }
}

/// A guest's stdout or stderr: bytes are cut into lines and written to the plugin's log.
#[derive(Clone)]
pub(crate) struct LogPipe {
    log: Arc<Mutex<PluginLog>>,
    level: LogLevel,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LogPipe {
    pub fn new(log: Arc<Mutex<PluginLog>>, level: LogLevel) -> Self {
        LogPipe {
            log,
            level,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap();
        let mut log = self.log.lock().unwrap();
        let cap = log.message_bytes_max;
        for &byte in bytes {
            if byte == b'\n' {
                let now_ms = log.clock.now_ms();
                log.push(self.level, &String::from_utf8_lossy(&pending), now_ms);
                pending.clear();
            } else if pending.len() <= cap {
                // One byte past the cap is kept so the line is marked truncated when logged.
                pending.push(byte);
            }
        }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI 0.2 is served; its streams go through `p2_stream`. A 0.3 guest is refused
        // at load, so nothing reaches this sink.
        Box::new(tokio::io::sink())
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}
