//! `tritium._tritium._Worker`: a `tritium worker` in this process. Its options are the
//! `tritium worker` command line, parsed by the binary's own parser; it serves the worker plane on
//! a tokio runtime of its own, registered in discovery (file or etcd) exactly as the binary's
//! worker is, through the same entry (`tritium_server::cli::serve_worker`), so frontends
//! (`tritium serve --discovery ...`) route KServe and OpenAI requests to the functions bound here.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::BackendRegistry;
use tritium_server::cli::WorkerListening;
use tritium_server::config::WorkerArgs;
use tritium_server::logging::LogControl;
use tritium_worker::DeclaredModel;

use crate::function::{self, Functions};
use crate::kv::{KvChannel, KvPublisher};
use crate::llm::{self, Handler, Handlers};

/// How long `start` waits for the models to load before it gives up.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[pyclass(module = "tritium._tritium", name = "_Worker")]
pub struct Worker {
    args: WorkerArgs,
    /// The process that made the worker: a forked child holds a copy without its threads.
    pid: u32,
    functions: Functions,
    handlers: Handlers,
    declared: Vec<DeclaredModel>,
    running: Option<Running>,
}

struct Running {
    stop: CancellationToken,
    thread: JoinHandle<Result<(), String>>,
    at: WorkerListening,
}

mod command_line {
    use clap::CommandFactory;
    use tritium_server::config::{Cli, Command, WorkerArgs};

    /// `tritium worker ARGV...`, parsed as the binary parses it.
    pub fn parse_worker_args(argv: Vec<String>) -> Result<WorkerArgs, String> {
        let args = ["tritium".to_string(), "worker".to_string()].into_iter().chain(argv);
        match Cli::parse_args(args) {
            Ok(Cli { command: Command::Worker(args), .. }) => Ok(args),
            Ok(_) => Err("not a worker command".into()),
            Err(e) => Err(e.render().to_string()),
        }
    }

    /// Whether `tritium worker --LONG` takes a value (`None`: there is no such option).
    pub fn takes_value(long: &str) -> Option<bool> {
        let cli = Cli::command();
        let worker = cli.find_subcommand("worker")?;
        let arg = worker
            .get_arguments()
            .find(|a| a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|v| v.contains(&long)))?;
        Some(arg.get_action().takes_values())
    }
}

/// Whether `tritium worker --LONG` takes a value; `None` when it has no such option.
#[pyfunction]
pub fn worker_option_takes_value(long: &str) -> Option<bool> {
    command_line::takes_value(long)
}

#[pymethods]
impl Worker {
    /// `argv`: the options of `tritium worker`, as on its command line.
    #[new]
    fn new(argv: Vec<String>) -> PyResult<Worker> {
        let args = command_line::parse_worker_args(argv).map_err(PyValueError::new_err)?;
        // Refused now rather than at start: the same checks the binary makes on its options.
        args.worker_config().map_err(PyValueError::new_err)?;
        Ok(Worker {
            args,
            pid: std::process::id(),
            functions: Functions::default(),
            handlers: Handlers::default(),
            declared: Vec::new(),
            running: None,
        })
    }

    /// Declares `function` as model `name` with the config text `config_text` (backend
    /// `python_function`); it is registered with the frontends when the worker starts.
    fn bind(&mut self, name: String, function: Py<PyAny>, config_text: String) -> PyResult<()> {
        self.check_pid()?;
        if self.running.is_some() {
            // Discovery advertises what the worker loaded at start.
            return Err(PyRuntimeError::new_err("bind functions before the worker starts: it is already registered"));
        }
        let mut functions = self.functions.lock();
        if functions.contains_key(&name) || self.declared.iter().any(|d| d.name == name) {
            return Err(PyValueError::new_err(format!("a function is already bound as model '{name}'")));
        }
        functions.insert(name.clone(), Arc::new(function));
        self.declared.push(DeclaredModel { name, config_text });
        Ok(())
    }

    /// Declares the language model `name`, its tokens made by `function` (an async generator)
    /// and its card (tokenizer, chat template) read from `model_path`, a GGUF file or a Hugging
    /// Face folder; it is registered with the frontends when the worker starts. Returns the
    /// model's KV publisher (blocks of `kv_block_size` tokens), the one its requests carry.
    fn bind_llm(
        &mut self,
        name: String,
        function: Py<PyAny>,
        model_path: std::path::PathBuf,
        kv_block_size: usize,
    ) -> PyResult<KvPublisher> {
        self.check_pid()?;
        if self.running.is_some() {
            return Err(PyRuntimeError::new_err("bind functions before the worker starts: it is already registered"));
        }
        if self.declared.iter().any(|d| d.name == name) {
            return Err(PyValueError::new_err(format!("a function is already bound as model '{name}'")));
        }
        // Read now, so a path that is no model is refused here rather than at start.
        llm::read_card(&model_path).map_err(|e| PyValueError::new_err(format!("model '{name}': {e}")))?;
        let kv = KvChannel::new(kv_block_size).map_err(PyValueError::new_err)?;
        let publisher = kv.publisher();
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        let config_text = format!("name: \"{quoted}\"\nbackend: \"{}\"\n", llm::LLM_BACKEND_NAME);
        let handler = Handler { function: Arc::new(function), model_path, kv };
        self.handlers.lock().insert(name.clone(), handler);
        self.declared.push(DeclaredModel { name, config_text });
        Ok(publisher)
    }

    /// Loads the models, listens on the worker plane and registers in discovery; returns once
    /// frontends can find it.
    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        self.check_pid()?;
        if self.running.is_some() {
            return Err(PyRuntimeError::new_err("the worker is already running"));
        }
        let mut config = self.args.worker_config().map_err(PyValueError::new_err)?;
        config.repository.declared.extend(self.declared.iter().cloned());
        let mut backends = BackendRegistry::default();
        function::register(&mut backends, Arc::clone(&self.functions));
        llm::register(&mut backends, Arc::clone(&self.handlers));
        let args = self.args.clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<WorkerListening, String>>(1);
        let failed_tx = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name("tritium-worker".into())
            .spawn(move || {
                let result = serve(args, config, backends, ready_tx, stopped);
                if let Err(e) = &result {
                    let _ = failed_tx.try_send(Err(e.clone()));
                }
                result
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the worker's thread: {e}")))?;
        // The GIL is free while the models load: a Python model's loader may need it.
        match py.detach(move || ready_rx.recv_timeout(START_TIMEOUT)) {
            Ok(Ok(at)) => {
                self.running = Some(Running { stop, thread, at });
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = py.detach(move || thread.join());
                Err(PyRuntimeError::new_err(format!("the worker did not start: {e}")))
            }
            Err(_) => {
                stop.cancel();
                Err(PyRuntimeError::new_err("the worker did not become ready in time"))
            }
        }
    }

    /// Deregisters (frontends stop sending), lets in-flight calls finish (within
    /// `--exit-timeout-secs`) and returns once the worker has ended. Nothing happens when it is
    /// not running.
    fn stop(&mut self, py: Python<'_>) -> PyResult<()> {
        self.check_pid()?;
        let Some(running) = self.running.take() else { return Ok(()) };
        running.stop.cancel();
        // Calls still running need the GIL to finish.
        let thread = running.thread;
        match py.detach(move || thread.join()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PyRuntimeError::new_err(format!("the worker ended with an error: {e}"))),
            Err(_) => Err(PyRuntimeError::new_err("the worker's thread panicked")),
        }
    }

    #[getter]
    fn running(&self) -> bool {
        self.running.is_some()
    }

    /// The worker-plane port it listens on (the one bound, when 0 was asked), once started;
    /// none on the NATS request plane.
    #[getter]
    fn port(&self) -> Option<u16> {
        self.running.as_ref().and_then(|r| r.at.addr).map(|addr| addr.port())
    }

    /// Its id in discovery, once started.
    #[getter]
    fn worker_id(&self) -> Option<String> {
        self.running.as_ref().map(|r| r.at.id.clone())
    }

    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for Worker {
    /// A started worker nobody can reach any more stops (without waiting for it).
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
    }
}

impl Worker {
    fn check_pid(&self) -> PyResult<()> {
        if std::process::id() != self.pid {
            return Err(PyRuntimeError::new_err(
                "this tritium.worker.Worker was created in another process (before a fork); its threads are not here: create a new one",
            ));
        }
        Ok(())
    }
}

/// The worker thread: a runtime of its own, serving until `stop` is cancelled.
fn serve(
    args: WorkerArgs,
    config: tritium_server::config::WorkerConfig,
    backends: BackendRegistry,
    ready: mpsc::SyncSender<Result<WorkerListening, String>>,
    stop: CancellationToken,
) -> Result<(), String> {
    // Logs to stderr as the binary's worker does (installed once per process).
    let _log = LogControl::install(&args.logging);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tritium-worker-runtime")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let announce = move |at: WorkerListening| {
        let _ = ready.try_send(Ok(at));
    };
    let shutdown = async move { stop.cancelled().await };
    let outcome = runtime
        .block_on(tritium_server::cli::serve_worker(&args, config, backends, announce, shutdown))
        .map_err(|e| e.to_string());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}
