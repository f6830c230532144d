//! One stub process: a Python interpreter running `tritium_python_stub.py` for one model instance,
//! its control socket and its shared-memory region. A reader (a task on the server's runtime, or
//! a thread where there is none) takes every frame the stub sends and settles what waits for it;
//! when the stub dies, everything in flight fails at once with one clear error, and the instance
//! pool starts a new stub for the next request.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc as sync_mpsc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tritium_backend_api::BackendError;
use tritium_proto::ErrorCode;
use tritium_tensor::Tensor;

use crate::binary::{self, INLINE, SMALL};
use crate::frame::{Frame, read_frame};
use crate::process::{StubProcess, lifeline};
use crate::region::{Block, Region};
use crate::services::{Services, StubLink};
use crate::wire::Reply;
use crate::writer::Writer;

mod conn;
use conn::{read_loop, read_task};

/// The most tensor bytes one frame from a stub may carry outside the region (what does not fit
/// in it travels in the frame): 2 GiB, above any tensor the server's message limit lets a client send.
const MAX_INLINE_BYTES: usize = 2 << 30;

/// How a stub is started.
#[derive(Debug, Clone)]
pub struct StubSpec {
    pub interpreter: PathBuf,
    /// The folder holding `tritium_python_stub.py`, `tritium_python_wire.py` and `triton_python_backend_utils.py`.
    pub stub_dir: PathBuf,
    pub region_bytes: usize,
    /// Bounds the stub's start-up (up to its hello) and its `finalize`.
    pub timeout: Duration,
    /// The instance's name, in logs and errors.
    pub name: String,
}

/// One answer of a request: its outputs, or its error.
pub type Answer = Result<Reply, BackendError>;

/// What an `executed` frame settles.
pub struct Executed {
    /// One answer per request for a plain model; empty for a decoupled one (its answers stream).
    pub answers: Vec<Answer>,
}

/// A decoupled request's responses as they come; `None` ends the stream.
pub struct StreamEvent {
    pub answer: Result<Option<Reply>, BackendError>,
    pub last: bool,
}

/// What runs once an execute is over (its `executed` frame, or the stub's death): the instance
/// takes its next job.
pub type OnExecuted = Box<dyn FnOnce() + Send>;

/// How long an execute may run, and what its requests get if it runs longer: its stub is then
/// ended (a model's `execute` cannot be interrupted) and started again.
#[derive(Debug, Clone)]
pub struct Deadline {
    pub limit: Duration,
    pub code: ErrorCode,
    pub message: String,
}

struct PendingExecute {
    reply: oneshot::Sender<Result<Executed, BackendError>>,
    inputs: Vec<Block>,
    /// A decoupled execute's requests, whose streams end with its error if it raises.
    streams: Vec<u64>,
    release: Option<OnExecuted>,
    /// The traced requests' places in their model's trace registry, until `execute` returns.
    _traces: Vec<crate::services::TracedRequest>,
}

struct PendingStream {
    sender: mpsc::UnboundedSender<StreamEvent>,
    inputs: Vec<Block>,
}

#[derive(Default)]
struct State {
    executes: HashMap<u64, PendingExecute>,
    streams: HashMap<u64, PendingStream>,
    /// The reply to `init`, `auto_complete` or `finalize`, which run one at a time.
    op_reply: Option<sync_mpsc::SyncSender<Frame>>,
    /// Why the stub stopped, once it has.
    death: Option<String>,
    /// Runs once the stub process has exited (the instance pool starts another).
    on_exit: Option<Box<dyn FnOnce() + Send>>,
    /// The process has exited and `on_exit` has been taken.
    exited: bool,
}

pub(crate) struct Conn {
    pub(crate) name: String,
    writer: Mutex<Writer>,
    pub(crate) region: Region,
    state: Mutex<State>,
    /// Frames read from the stub; every frame sent back acknowledges them.
    received: AtomicU64,
    unacknowledged_bytes: AtomicUsize,
    next_id: AtomicU64,
    alive: AtomicBool,
}

pub struct Stub {
    conn: Arc<Conn>,
    process: Arc<StubProcess>,
    timeout: Duration,
}

/// A request as `execute` sends it.
pub struct StubRequest {
    pub key: u64,
    /// Triton's sequence flags (start 1, end 2).
    pub flags: u32,
    /// The names of the outputs to compute, as `binary::encode_names` made them (a model's
    /// requests that want every output share one).
    pub outputs: bytes::Bytes,
    /// What differs from the stub's defaults (request id, correlation id, timeout, parameters):
    /// a JSON object, or nothing.
    pub extras: Vec<u8>,
    pub inputs: Vec<Tensor>,
    /// While the request runs, its trace is where the model's BLS calls that pass
    /// `trace=request.trace()` find their parent.
    pub trace: Option<crate::services::TracedRequest>,
}

impl Stub {
    /// Starts a stub and waits for its hello.
    pub fn start(spec: &StubSpec, services: Services) -> Result<Stub, String> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot create the stub's socket: {e}"))?;
        let region = Region::create(spec.region_bytes, spec.region_bytes / 2)?;
        let script = spec.stub_dir.join("tritium_python_stub.py");
        let lifeline = lifeline();
        let mut command = Command::new(&spec.interpreter);
        command
            .arg(&script)
            .args(["3", "4", &region.size().to_string(), &region.input_size().to_string()])
            .arg(if lifeline.is_some() { "5" } else { "-1" })
            .env("PYTHONPATH", python_path(&spec.stub_dir))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null());
        let (socket_fd, region_fd, lifeline_fd) = (theirs.as_raw_fd(), region.fd(), lifeline.unwrap_or(-1));
        // SAFETY: the closure runs in the forked child before exec and calls only fcntl and dup2,
        // which are async-signal-safe. The descriptors are first copied above 10 so that no
        // target (3, 4, 5) can clobber another's source; the copies close on exec, 3 to 5 stay.
        unsafe {
            command.pre_exec(move || {
                let socket = libc::fcntl(socket_fd, libc::F_DUPFD_CLOEXEC, 10);
                let region = libc::fcntl(region_fd, libc::F_DUPFD_CLOEXEC, 10);
                if socket < 0 || region < 0 || libc::dup2(socket, 3) < 0 || libc::dup2(region, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if lifeline_fd >= 0 && libc::dup2(lifeline_fd, 5) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        // Its own process group (a terminal's Ctrl-C reaches the server, which stops stubs
        // itself), ended as a whole.
        let process = StubProcess::spawn(&mut command).map_err(|e| {
            format!("cannot start the Python interpreter '{}' for the python backend: {e}", spec.interpreter.display())
        })?;
        drop(theirs);
        let stub = Stub {
            conn: Arc::new(Conn {
                name: spec.name.clone(),
                writer: Mutex::new(Writer::new(
                    ours.try_clone().map_err(|e| format!("cannot clone the stub's socket: {e}"))?,
                    spec.timeout,
                )),
                region,
                state: Mutex::new(State::default()),
                received: AtomicU64::new(0),
                unacknowledged_bytes: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                alive: AtomicBool::new(true),
            }),
            process: Arc::new(process),
            timeout: spec.timeout,
        };
        stub.watch()?;
        stub.hello(ours, services)?;
        Ok(stub)
    }

    /// Watches the process itself, not only its socket: a stub that died while a forked helper
    /// still holds its socket is seen at once; what is left of its group is ended with it.
    fn watch(&self) -> Result<(), String> {
        let (conn, process) = (Arc::clone(&self.conn), Arc::clone(&self.process));
        std::thread::Builder::new()
            .name(format!("python-watch-{}", self.conn.name))
            .stack_size(64 << 10)
            .spawn(move || {
                if !process.wait_exit() {
                    return;
                }
                let status = process.try_reap().filter(|s| !s.is_empty()).map(|s| format!(" ({s})")).unwrap_or_default();
                conn.die(format!("the stub process exited{status}"));
                let on_exit = {
                    let mut state = conn.state.lock();
                    state.exited = true;
                    state.on_exit.take()
                };
                if let Some(on_exit) = on_exit {
                    on_exit();
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot watch the stub process: {e}"))
    }

    /// Runs `on_exit` once the stub process has exited (at once if it has).
    pub fn on_exit(&self, on_exit: Box<dyn FnOnce() + Send>) {
        let mut state = self.conn.state.lock();
        if state.exited {
            drop(state);
            return on_exit();
        }
        state.on_exit = Some(on_exit);
    }

    /// Reads the stub's first frame within the timeout, then hands the socket to its reader: a
    /// task on the server's runtime where there is one (the worker that sent a request takes its
    /// answer, with no other thread to wake), else a thread.
    fn hello(&self, mut socket: UnixStream, services: Services) -> Result<(), String> {
        let limit = MAX_INLINE_BYTES;
        socket.set_read_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
        let first = read_frame(&mut socket, limit);
        let frame = match first {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(self.exit_reason("the Python stub exited before it started")),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                self.kill();
                return Err(format!("the Python stub did not start within {} s", self.timeout.as_secs()));
            }
            Err(e) => return Err(self.exit_reason(&format!("the Python stub's socket failed: {e}"))),
        };
        self.conn.received.fetch_add(1, Ordering::AcqRel);
        match frame.op() {
            "hello" => {}
            "fatal" => return Err(text(&frame.header, "message")),
            other => return Err(format!("the Python stub sent '{other}' before its hello")),
        }
        socket.set_read_timeout(None).map_err(|e| e.to_string())?;
        // Bounds a blocking write; a non-blocking socket's writer waits up to the same timeout.
        socket.set_write_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
        let (conn, process) = (Arc::clone(&self.conn), Arc::clone(&self.process));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                socket.set_nonblocking(true).map_err(|e| e.to_string())?;
                runtime.spawn(async move {
                    read_task(conn, socket, services, limit).await;
                    // A stub that closed its socket is of no further use, even if it still runs.
                    drop(tokio::task::spawn_blocking(move || process.kill()));
                });
            }
            _ => {
                std::thread::Builder::new()
                    .name(format!("python-{}", self.conn.name))
                    .spawn(move || {
                        read_loop(conn, socket, services, limit);
                        process.kill();
                    })
                    .map_err(|e| format!("cannot start the stub's reader thread: {e}"))?;
            }
        }
        Ok(())
    }

    fn exit_reason(&self, what: &str) -> String {
        let status = self.process.kill().filter(|s| !s.is_empty()).map(|s| format!(" ({s})")).unwrap_or_default();
        format!("{what}{status}")
    }

    pub fn is_alive(&self) -> bool {
        self.conn.alive.load(Ordering::Acquire)
    }

    /// Runs `init` or `auto_complete` (or `finalize`) on the stub's main thread and waits for its
    /// reply, up to `timeout` when one is given.
    pub fn call(&self, header: Value, timeout: Option<Duration>) -> Result<Value, String> {
        let (sender, receiver) = sync_mpsc::sync_channel(1);
        {
            let mut state = self.conn.state.lock();
            if let Some(death) = &state.death {
                return Err(death.clone());
            }
            state.op_reply = Some(sender);
        }
        self.conn.send(header, &[]).map_err(|e| e.to_string())?;
        let frame = match timeout {
            Some(limit) => receiver.recv_timeout(limit).map_err(|_| self.conn.death_or("the Python stub did not answer in time")),
            None => receiver.recv().map_err(|_| self.conn.death_or("the Python stub stopped")),
        }?;
        match frame.op() {
            "error" => Err(text(&frame.header, "message")),
            _ => Ok(frame.header),
        }
    }

    /// Sends one `execute` of `requests`; `reply` gets the `executed` frame's answers. For a
    /// decoupled model each request's responses go to its stream in `streams`.
    pub fn execute(
        &self,
        requests: Vec<StubRequest>,
        streams: Vec<mpsc::UnboundedSender<StreamEvent>>,
        reply: oneshot::Sender<Result<Executed, BackendError>>,
        release: OnExecuted,
        deadline: Option<Deadline>,
    ) {
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let decoupled = !streams.is_empty();
        let mut inline: Vec<bytes::Bytes> = Vec::new();
        let mut inline_size = 0u64;
        let mut placed = Vec::with_capacity(requests.len());
        let mut per_request_blocks = Vec::with_capacity(requests.len());
        let mut traces = Vec::new();
        for request in requests {
            traces.extend(request.trace);
            let mut own = Vec::new();
            let inputs: Vec<(Tensor, u64)> = request
                .inputs
                .into_iter()
                .map(|tensor| {
                    let in_region = tensor.data.len() > SMALL;
                    let location = match in_region.then(|| self.conn.region.write_input(&tensor.data)).flatten() {
                        Some(block) => {
                            own.push(block);
                            block.offset as u64
                        }
                        None => {
                            let at = inline_size;
                            inline_size += tensor.data.len() as u64;
                            inline.push(tensor.data.clone());
                            INLINE | at
                        }
                    };
                    (tensor, location)
                })
                .collect();
            per_request_blocks.push((request.key, own));
            placed.push((request.key, request.flags, request.outputs, request.extras, inputs));
        }
        {
            let mut state = self.conn.state.lock();
            if let Some(death) = &state.death {
                let death = death.clone();
                drop(state);
                per_request_blocks.into_iter().flat_map(|(_, b)| b).for_each(|b| self.conn.region.free_input(b));
                release();
                let _ = reply.send(Err(stub_failed(&self.conn.name, &death)));
                return;
            }
            let mut keys = Vec::new();
            let mut blocks = Vec::new();
            if decoupled {
                for ((key, own), sender) in per_request_blocks.into_iter().zip(streams) {
                    state.streams.insert(key, PendingStream { sender, inputs: own });
                    keys.push(key);
                }
            } else {
                blocks = per_request_blocks.into_iter().flat_map(|(_, b)| b).collect();
            }
            let pending = PendingExecute { reply, inputs: blocks, streams: keys, release: Some(release), _traces: traces };
            state.executes.insert(id, pending);
        }
        let parts: Vec<&[u8]> = inline.iter().map(|b| b.as_ref()).collect();
        let count = u32::try_from(placed.len()).unwrap_or(u32::MAX);
        let header = |buffer: &mut Vec<u8>, ack| {
            binary::execute_head(buffer, count, ack, id);
            for (key, flags, outputs, extras, inputs) in &placed {
                binary::request(buffer, *key, *flags, outputs, extras, inputs);
            }
            Ok(())
        };
        if let Err(e) = self.conn.send_with(header, &parts) {
            // The reader sees the socket fail too and settles everything in flight.
            tracing::warn!(instance = %self.conn.name, "cannot send to the Python stub: {e}");
            self.kill();
            return;
        }
        if let Some(deadline) = deadline {
            self.expire_at(id, deadline);
        }
    }

    /// Ends execute `id` with the deadline's error if it is still running then, and its stub with
    /// it (the next job starts a new one).
    fn expire_at(&self, id: u64, deadline: Deadline) {
        let (conn, process) = (Arc::clone(&self.conn), Arc::clone(&self.process));
        let at = Instant::now() + deadline.limit;
        let expire = move || {
            if conn.expire(id, deadline) {
                // Killing waits for the process and scans for its descendants: off the runtime.
                process.kill();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let handle = runtime.clone();
                drop(runtime.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    drop(handle.spawn_blocking(expire));
                }));
            }
            Err(_) => {
                let _ = std::thread::Builder::new().name("python-deadline".into()).spawn(move || {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    expire();
                });
            }
        }
    }

    /// Tells the stub a decoupled request's client has gone (`is_cancelled()` turns true).
    pub fn cancel(&self, key: u64) {
        let _ = self.conn.send(json!({"op": "cancel", "request": key}), &[]);
    }

    /// Runs the model's `finalize` (within the timeout), then ends the process: at once when an
    /// `execute` is still running (finalize would only wait behind it), when finalize failed or
    /// never answered.
    pub fn stop(&self) {
        if !self.is_alive() {
            return self.kill();
        }
        if !self.conn.state.lock().executes.is_empty() {
            tracing::warn!(instance = %self.conn.name, "the model is still in execute; its stub is ended without finalize");
            return self.kill();
        }
        if let Err(e) = self.call(json!({"op": "finalize"}), Some(self.timeout)) {
            tracing::warn!(instance = %self.conn.name, "the model's finalize failed: {e}");
            return self.kill();
        }
        self.process.wait_or_kill(self.timeout);
    }

    /// Ends the stub process and its process group (its helpers) at once.
    pub fn kill(&self) {
        self.process.kill();
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.kill();
    }
}

impl StubLink for Conn {
    fn region(&self) -> &Region {
        &self.region
    }

    fn send(&self, header: Value, payload: &[&[u8]]) -> std::io::Result<()> {
        Conn::send(self, header, payload)
    }
}

/// The error every request in flight gets when its stub dies, in Triton's words (the cause goes
/// to the log).
pub fn stub_failed(instance: &str, why: &str) -> BackendError {
    tracing::warn!(instance, "the Python stub stopped: {why}");
    BackendError::refused(ErrorCode::Internal, format!("Stub process '{instance}' is not healthy."))
}

fn text(header: &Value, key: &str) -> String {
    header.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The stub's own folder first, then whatever the server was started with.
fn python_path(stub_dir: &std::path::Path) -> std::ffi::OsString {
    let mut path = stub_dir.as_os_str().to_owned();
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(existing);
    }
    path
}
