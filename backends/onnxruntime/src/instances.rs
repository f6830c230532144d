//! A model version's instances: one thread per `instance_group` instance, each owning its own
//! ONNX Runtime session, taking requests from one bounded queue. Inference never runs on the async
//! runtime, at most `count` requests of a model run at once, and a request whose client has gone
//! is dropped before it runs.

use std::sync::{Arc, Mutex};

use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use tokio::sync::{mpsc, oneshot};
use tritium_proto::ErrorCode;
use tritium_tensor::Tensor;
use tritium_worker::backend::BackendError;

use crate::convert::{input_value, output_tensor};

/// Requests waiting for an instance, per model version; a full queue makes callers wait.
const QUEUE_DEPTH: usize = 1024;

type Reply = oneshot::Sender<Result<Vec<Tensor>, BackendError>>;

struct Job {
    inputs: Vec<Tensor>,
    reply: Reply,
}

/// The instances of one model version. Dropping it ends their threads once they finish the
/// request in hand.
pub struct Instances {
    queue: mpsc::Sender<Job>,
}

/// What every instance of a version runs with.
pub struct RunSettings {
    /// The config's outputs, the only ones computed.
    pub outputs: Vec<String>,
    pub arena_shrinkage: Option<String>,
}

impl Instances {
    /// Starts one thread per session, named after the model.
    pub fn start(model: &str, version: i64, sessions: Vec<Session>, settings: &RunSettings) -> Result<Instances, String> {
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let jobs = Arc::new(Mutex::new(jobs));
        for (index, session) in sessions.into_iter().enumerate() {
            let options = run_options(settings).map_err(|e| format!("cannot set the run options: {}", e.message()))?;
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("ort-{model}-{version}-{index}"))
                .spawn(move || serve(session, &jobs, &options))
                .map_err(|e| format!("cannot start an instance thread: {e}"))?;
        }
        Ok(Instances { queue })
    }

    /// Runs `inputs` on the next free instance.
    pub async fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || BackendError::failed(ErrorCode::Unavailable, "the model's instances have stopped");
        self.queue.send(Job { inputs, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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

fn serve(mut session: Session, jobs: &Mutex<mpsc::Receiver<Job>>, options: &RunOptions<HasSelectedOutputs>) {
    loop {
        let job = {
            let mut jobs = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            jobs.blocking_recv()
        };
        let Some(job) = job else { return };
        if job.reply.is_closed() {
            continue;
        }
        let answer = infer(&mut session, &job.inputs, options);
        // The client may have gone meanwhile; nothing waits for the answer then.
        let _ = job.reply.send(answer);
    }
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
