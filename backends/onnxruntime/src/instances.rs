//! A model version's instances: one ONNX Runtime session per `instance_group` instance, each
//! running at most one request at a time on the blocking pool, never on the async runtime. A
//! request takes the instance that finished last: the others' ONNX Runtime threads may still be
//! spinning after their last run, and on a small machine handing work round the instances in
//! turn made those spins compete with the run (half the throughput at one client,
//! bench/results/onnx-2026-11-23-vm.md). A request whose client has gone while it waited is
//! dropped before it runs.
//!
//! A version whose sessions share the process's intra-op pool (whose threads block between
//! parallel sections) may also have a solo session with a pool of its own that spins only while
//! a run is in progress. A request that finds no other ONNX Runtime run in flight, in any model,
//! runs there in place of an idle instance: at one client the spin saves a futex wake-up per
//! parallel section, and with runs side by side, spinning pools would take the cores from each
//! other (half the CNN's throughput with two runs at once on 2 cores).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tritium_backend_api::BackendError;
use tritium_proto::ErrorCode;
use tritium_tensor::Tensor;

use crate::convert::{input_value, output_tensor};

type Reply = oneshot::Sender<Result<Vec<Tensor>, BackendError>>;

/// One instance: its session and the run options it is used with.
struct Instance {
    session: Session,
    options: RunOptions<HasSelectedOutputs>,
}

/// The instances of one model version.
pub struct Instances {
    shared: Arc<Shared>,
}

struct Shared {
    sessions: Mutex<Sessions>,
    /// One permit per idle instance: requests wait here, in arrival order.
    free: Arc<Semaphore>,
}

struct Sessions {
    /// Idle instances; the last one pushed is the next one used.
    idle: Vec<Instance>,
    /// The solo session while it is idle; taken in place of an instance, so runs never outnumber
    /// instances.
    solo: Option<Instance>,
}

/// ONNX Runtime runs in flight in this process, all models together.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts one run in flight while it lives.
struct Running {
    alone: bool,
}

impl Running {
    fn start() -> Running {
        Running { alone: RUNNING.fetch_add(1, Ordering::SeqCst) == 0 }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every instance of a version runs with.
pub struct RunSettings {
    /// The config's outputs, the only ones computed.
    pub outputs: Vec<String>,
    pub arena_shrinkage: Option<String>,
}

impl Instances {
    /// `sessions` are the instances; `solo`, when given, serves the requests that run alone.
    pub fn start(sessions: Vec<Session>, solo: Option<Session>, settings: &RunSettings) -> Result<Instances, String> {
        let count = sessions.len();
        let instance = |session| -> Result<Instance, String> {
            let options = run_options(settings).map_err(|e| format!("cannot set the run options: {}", e.message()))?;
            Ok(Instance { session, options })
        };
        let idle = sessions.into_iter().map(instance).collect::<Result<Vec<_>, String>>()?;
        let solo = solo.map(instance).transpose()?;
        let sessions = Mutex::new(Sessions { idle, solo });
        Ok(Instances { shared: Arc::new(Shared { sessions, free: Arc::new(Semaphore::new(count)) }) })
    }

    /// Runs `inputs` on the solo session when no other run is in flight, else on the most recently
    /// idle instance, waiting for one when all are busy.
    pub async fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let stopped = || BackendError::failed(ErrorCode::Unavailable, "the model's instances have stopped");
        let permit = Arc::clone(&self.shared.free).acquire_owned().await.map_err(|_| stopped())?;
        let (reply, answer) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        // The blocking task puts the instance back itself, so a client that goes away mid-run
        // cannot lose it.
        tokio::task::spawn_blocking(move || shared.run_on_idle(permit, &inputs, reply));
        answer.await.map_err(|_| stopped())?
    }
}

impl Shared {
    fn run_on_idle(&self, permit: OwnedSemaphorePermit, inputs: &[Tensor], reply: Reply) {
        if reply.is_closed() {
            return;
        }
        let (running, taken) = {
            let mut sessions = self.sessions.lock();
            let running = Running::start();
            let solo = if running.alone { sessions.solo.take() } else { None };
            (running, solo.map(|s| (s, true)).or_else(|| sessions.idle.pop().map(|i| (i, false))))
        };
        let Some((mut instance, solo)) = taken else {
            let _ = reply.send(Err(BackendError::failed(ErrorCode::Internal, "no idle instance for a free permit")));
            return;
        };
        let answer = infer(&mut instance.session, inputs, &instance.options);
        drop(running);
        let mut sessions = self.sessions.lock();
        if solo {
            sessions.solo = Some(instance);
        } else {
            sessions.idle.push(instance);
        }
        drop(sessions);
        drop(permit);
        // The client may have gone meanwhile; nothing waits for the answer then.
        let _ = reply.send(answer);
    }
}

fn run_options(settings: &RunSettings) -> ort::Result<RunOptions<HasSelectedOutputs>> {
    let mut options = RunOptions::new()?;
    if let Some(shrinkage) = &settings.arena_shrinkage {
        options.set("memory.enable_memory_arena_shrinkage", shrinkage)?;
    }
    let selector = settings.outputs.iter().fold(OutputSelector::no_default(), |selector, name| selector.with(name.as_str()));
    Ok(options.with_outputs(selector))
}

fn infer(
    session: &mut Session,
    inputs: &[Tensor],
    options: &RunOptions<HasSelectedOutputs>,
) -> Result<Vec<Tensor>, BackendError> {
    let values = inputs
        .iter()
        .map(input_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| BackendError::failed(ErrorCode::InvalidArg, message))?;
    let outputs = session.run_with_options(values, options).map_err(runtime_error)?;
    outputs
        .into_iter()
        .map(|(name, value)| output_tensor(name, value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| BackendError::failed(ErrorCode::Internal, message))
}

/// Triton's wording for a failed run: INTERNAL "onnx runtime error <code>: <message>".
pub fn runtime_error(error: ort::Error) -> BackendError {
    BackendError::failed(ErrorCode::Internal, format!("onnx runtime error {}: {}", ort_code(&error), error.message()))
}

/// ONNX Runtime's `OrtErrorCode` numbers.
fn ort_code(error: &ort::Error) -> i32 {
    use ort::ErrorCode as Code;
    match error.code() {
        Code::Ok => 0,
        Code::InvalidArgument => 2,
        Code::NoSuchFile => 3,
        Code::NoModel => 4,
        Code::EngineError => 5,
        Code::RuntimeException => 6,
        Code::InvalidProtobuf => 7,
        Code::ModelLoaded => 8,
        Code::NotImplemented => 9,
        Code::InvalidGraph => 10,
        Code::ExecutionProviderFailure => 11,
        _ => 1,
    }
}
