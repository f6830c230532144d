//! Triton's trace file (`--trace-config triton,file=PATH`): finished traces are rendered as
//! Triton 2.51 writes them ([`super::triton_json`]) by a thread of their own and written when
//! Triton writes them: all of them to `PATH`, as one JSON array, at shutdown and whenever a
//! TraceSetting update replaces the settings (the file then holds every trace so far); or, with
//! `log-frequency=N`, every `N` traces (a request with its ensemble steps and BLS calls counts
//! once) to `PATH.0`, `PATH.1`, ..., what is left at shutdown or at an update to the next index.
//!
//! Bounded three times: finished traces wait for the writer thread in a channel of
//! [`QUEUE_TRACES`] traces; the tensors they hold there (level `TENSORS`) count against
//! `--trace-file-buffer-bytes`, and so do a file's rendered traces held until they are written.
//! A trace past a bound is dropped and counted in `tritium_trace_dropped_total`, never waited
//! for: a request never waits on a disk.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Duration;

use tritium_backend_api::trace::{FinishedTrace, TraceSink};

use crate::metrics::TraceCounters;

/// Finished traces waiting for the writer thread.
pub const QUEUE_TRACES: usize = 4096;

enum Message {
    Trace {
        file: Arc<str>,
        log_frequency: u64,
        trace: Box<FinishedTrace>,
        tensor_bytes: u64,
    },
    /// Write every file (the settings changed).
    WriteHeld,
    /// Write every file, then answer (shutdown).
    Flush(SyncSender<()>),
}

/// The trace files' writer thread and the queue to it.
pub struct FileWriter {
    sender: Mutex<Option<SyncSender<Message>>>,
    /// Tensor bytes the queued traces hold (level `TENSORS`), at most `buffer_bytes`: a queued
    /// trace keeps its request's tensors alive until the writer has rendered it.
    queued_bytes: Arc<AtomicU64>,
    buffer_bytes: u64,
    counters: TraceCounters,
}

impl FileWriter {
    /// Starts the writer thread; a file holds at most `buffer_bytes` of traces before it is written.
    /// Written and dropped traces count in `counters`.
    pub fn start(buffer_bytes: u64, counters: TraceCounters) -> FileWriter {
        let (sender, receiver) = sync_channel(QUEUE_TRACES);
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let (queued, thread_counters) = (Arc::clone(&queued_bytes), counters.clone());
        let spawned = std::thread::Builder::new()
            .name("trace-file".into())
            .spawn(move || run(receiver, buffer_bytes, &queued, &thread_counters));
        if let Err(e) = spawned {
            tracing::error!("the trace file writer could not start ({e}); traces are dropped");
            return FileWriter { sender: Mutex::new(None), queued_bytes, buffer_bytes, counters };
        }
        FileWriter { sender: Mutex::new(Some(sender)), queued_bytes, buffer_bytes, counters }
    }

    /// A sink writing to `file` (`""`: nowhere) every `log_frequency` traces (0: at shutdown).
    pub fn sink(self: &Arc<Self>, file: String, log_frequency: u64) -> Arc<dyn TraceSink> {
        Arc::new(FileSink { writer: Arc::clone(self), file: Arc::from(file), log_frequency })
    }

    fn sender(&self) -> Option<SyncSender<Message>> {
        self.sender.lock().clone()
    }

    /// Writes every file now, without waiting (a settings update).
    pub fn write_held(&self) {
        if let Some(sender) = self.sender() {
            let _ = sender.try_send(Message::WriteHeld);
        }
    }

    /// Writes what every file holds and waits (a few seconds at most) for the writer to finish.
    pub fn flush(&self) {
        let Some(sender) = self.sender() else { return };
        let (done, wait) = sync_channel(1);
        if sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
}

struct FileSink {
    writer: Arc<FileWriter>,
    file: Arc<str>,
    log_frequency: u64,
}

impl TraceSink for FileSink {
    fn finished(&self, trace: FinishedTrace) {
        if self.file.is_empty() {
            return;
        }
        let counters = &self.writer.counters;
        let Some(sender) = self.writer.sender() else {
            counters.file_dropped.inc();
            return;
        };
        let tensor_bytes: u64 = trace.nodes.iter().flat_map(|n| &n.tensors).map(|t| t.tensor.data.len() as u64).sum();
        let queued = &self.writer.queued_bytes;
        if tensor_bytes > 0 && queued.fetch_add(tensor_bytes, Ordering::Relaxed) + tensor_bytes > self.writer.buffer_bytes {
            queued.fetch_sub(tensor_bytes, Ordering::Relaxed);
            counters.file_dropped.inc();
            return;
        }
        let file = Arc::clone(&self.file);
        let message = Message::Trace { file, log_frequency: self.log_frequency, trace: Box::new(trace), tensor_bytes };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sender.try_send(message) {
            queued.fetch_sub(tensor_bytes, Ordering::Relaxed);
            counters.file_dropped.inc();
        }
    }
}

/// One file's traces: without a log frequency, all of them (the file is rewritten whole each
/// time); with one, those not yet written to an indexed file.
#[derive(Default)]
struct Pending {
    traces: Vec<String>,
    bytes: u64,
    /// Traces held that the file on disk does not have yet.
    unwritten: bool,
    /// The index of the next `PATH.N` (log-frequency mode).
    next_index: u64,
    log_frequency: u64,
    /// A drop past the byte bound was logged already.
    warned: bool,
    /// Traces already counted as written (the whole-file mode rewrites them).
    counted: u64,
}

fn run(receiver: Receiver<Message>, buffer_bytes: u64, queued_bytes: &AtomicU64, counters: &TraceCounters) {
    let mut files: HashMap<Arc<str>, Pending> = HashMap::new();
    while let Ok(message) = receiver.recv() {
        match message {
            Message::Trace { file, log_frequency, trace, tensor_bytes } => {
                let rendered = super::triton_json::render(&trace);
                drop(trace);
                queued_bytes.fetch_sub(tensor_bytes, Ordering::Relaxed);
                let pending = files.entry(Arc::clone(&file)).or_default();
                pending.log_frequency = log_frequency;
                let size = rendered.len() as u64;
                if pending.bytes + size > buffer_bytes {
                    counters.file_dropped.inc();
                    if !std::mem::replace(&mut pending.warned, true) {
                        tracing::warn!(
                            "the trace file '{file}' holds --trace-file-buffer-bytes ({buffer_bytes}) of traces; more are dropped until it is written (set triton,log-frequency to write as it goes)"
                        );
                    }
                    continue;
                }
                pending.traces.push(rendered);
                pending.bytes += size;
                pending.unwritten = true;
                if log_frequency > 0 && pending.traces.len() as u64 >= log_frequency {
                    write_indexed(&file, pending, counters);
                }
            }
            Message::WriteHeld => write_all(&mut files, counters),
            Message::Flush(done) => {
                write_all(&mut files, counters);
                let _ = done.send(());
            }
        }
    }
}

fn write_all(files: &mut HashMap<Arc<str>, Pending>, counters: &TraceCounters) {
    for (file, pending) in files.iter_mut().filter(|(_, p)| p.unwritten) {
        if pending.log_frequency > 0 {
            write_indexed(file, pending, counters);
        } else {
            // Every trace so far, the file rewritten whole: one valid array at every moment.
            let traces = pending.traces.len() as u64;
            let fresh = traces - pending.counted;
            if write(Path::new(&**file), &pending.traces, fresh, counters) {
                pending.counted = traces;
            }
            pending.unwritten = false;
        }
    }
}

fn write_indexed(file: &str, pending: &mut Pending, counters: &TraceCounters) {
    let path = PathBuf::from(format!("{file}.{}", pending.next_index));
    pending.next_index += 1;
    let traces = std::mem::take(&mut pending.traces);
    write(&path, &traces, traces.len() as u64, counters);
    pending.bytes = 0;
    pending.warned = false;
    pending.unwritten = false;
}

/// Writes `traces` as one JSON array, as Triton does; `fresh` of them are new to the counters.
/// Whether the file was written.
fn write(path: &Path, traces: &[String], fresh: u64, counters: &TraceCounters) -> bool {
    let body = format!("[{}]", traces.join(","));
    let written = std::fs::File::create(path).and_then(|mut f| f.write_all(body.as_bytes()).and_then(|()| f.flush()));
    match written {
        Ok(()) => {
            counters.file_traces.inc_by(fresh);
            true
        }
        Err(e) => {
            counters.file_dropped.inc_by(fresh);
            tracing::error!("writing {} traces to '{}' failed: {e}", traces.len(), path.display());
            false
        }
    }
}
