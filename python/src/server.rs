//! `tritium._tritium.Server`: a server in this process. Its options are the `tritium serve`
//! command line, parsed by the binary's own parser; it serves on a tokio runtime of its own, on
//! its own threads, so Python keeps running (and the GIL stays free) while it serves.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use command_line::parse_serve_args;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::BackendRegistry;
use tritium_server::cli::Listening;
use tritium_server::config::ServeArgs;
use tritium_server::logging::LogControl;
use tritium_worker::{DeclaredModel, ModelRepository};

use crate::function::{self, Functions};

/// How long `start` waits for the models to load before it gives up.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[pyclass(module = "tritium._tritium", name = "_Server")]
pub struct Server {
    args: ServeArgs,
    /// The process that made the server: a forked child holds a copy without its threads.
    pid: u32,
    functions: Functions,
    declared: Vec<DeclaredModel>,
    running: Option<Running>,
}

struct Running {
    stop: CancellationToken,
    thread: JoinHandle<Result<(), String>>,
    at: Listening,
    /// The running server's registry and runtime: a function bound now is loaded there.
    repository: Arc<ModelRepository>,
    runtime: tokio::runtime::Handle,
}

mod command_line {
    use clap::CommandFactory;
    use tritium_server::config::{Cli, Command, ServeArgs};

    /// `tritium serve ARGV...`, parsed as the binary parses it.
    pub fn parse_serve_args(argv: Vec<String>) -> Result<ServeArgs, String> {
        let args = ["tritium".to_string(), "serve".to_string()].into_iter().chain(argv);
        match Cli::parse_args(args) {
            Ok(Cli { command: Command::Serve(args), .. }) => Ok(args),
            Ok(_) => Err("not a serve command".into()),
            Err(e) => Err(e.render().to_string()),
        }
    }

    /// Whether `tritium serve --LONG` takes a value (`None`: there is no such option).
    pub fn takes_value(long: &str) -> Option<bool> {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve")?;
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|v| v.contains(&long)))?;
        Some(arg.get_action().takes_values())
    }
}

/// Whether `tritium serve --LONG` takes a value; `None` when it has no such option.
#[pyfunction]
pub fn option_takes_value(long: &str) -> Option<bool> {
    command_line::takes_value(long)
}

#[pymethods]
impl Server {
    /// `argv`: the options of `tritium serve`, as on its command line.
    #[new]
    fn new(argv: Vec<String>) -> PyResult<Server> {
        let args = parse_serve_args(argv).map_err(PyValueError::new_err)?;
        Ok(Server { args, pid: std::process::id(), functions: Functions::default(), declared: Vec::new(), running: None })
    }

    /// Declares `function` as model `name` with the config text `config_text` (backend
    /// `python_function`). On a running server the model is loaded before this returns.
    fn bind(&mut self, py: Python<'_>, name: String, function: Py<PyAny>, config_text: String) -> PyResult<()> {
        self.check_pid()?;
        {
            let mut functions = self.functions.lock();
            if functions.contains_key(&name) {
                return Err(PyValueError::new_err(format!("a function is already bound as model '{name}'")));
            }
            functions.insert(name.clone(), Arc::new(function));
        }
        let declared = DeclaredModel { name: name.clone(), config_text };
        if let Some(running) = &self.running {
            let repository = Arc::clone(&running.repository);
            let model = declared.clone();
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            // Loaded on the server's runtime, as a client's load is; the GIL is free meanwhile,
            // for the backend may need it.
            running.runtime.spawn_blocking(move || {
                let _ = done_tx.send(repository.declare(model));
            });
            let loaded = py.detach(move || done_rx.recv());
            let refused = match loaded {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the server stopped while the model loaded".to_string()),
            };
            if let Some(reason) = refused {
                self.functions.lock().remove(&name);
                return Err(PyValueError::new_err(format!("model '{name}' did not load: {reason}")));
            }
        }
        self.declared.push(declared);
        Ok(())
    }

    /// Starts serving; returns once the models are loaded and the ports listen.
    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        self.check_pid()?;
        if self.running.is_some() {
            return Err(PyRuntimeError::new_err("the server is already running"));
        }
        let mut config = self.args.server_config().map_err(PyValueError::new_err)?;
        config.repository.declared.extend(self.declared.iter().cloned());
        let mut backends = BackendRegistry::default();
        function::register(&mut backends, Arc::clone(&self.functions));
        let args = self.args.clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Listening, String>>(1);
        let (handles_tx, handles_rx) = mpsc::sync_channel(1);
        let failed_tx = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name("tritium-server".into())
            .spawn(move || {
                let result = serve(args, config, backends, ready_tx, handles_tx, stopped);
                if let Err(e) = &result {
                    let _ = failed_tx.try_send(Err(e.clone()));
                }
                result
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the server's thread: {e}")))?;
        // The GIL is free while the models load: a Python model's loader may need it.
        let ready = py.detach(move || ready_rx.recv_timeout(START_TIMEOUT));
        match ready {
            // The registry is handed over before the ready call, so it is there once ready.
            Ok(Ok(at)) => match handles_rx.try_recv() {
                Ok((repository, runtime)) => {
                    self.running = Some(Running { stop, thread, at, repository, runtime });
                    Ok(())
                }
                Err(_) => {
                    stop.cancel();
                    let _ = py.detach(move || thread.join());
                    Err(PyRuntimeError::new_err("the server started without handing over its registry"))
                }
            },
            Ok(Err(e)) => {
                let _ = py.detach(move || thread.join());
                Err(PyRuntimeError::new_err(format!("the server did not start: {e}")))
            }
            Err(_) => {
                stop.cancel();
                Err(PyRuntimeError::new_err("the server did not become ready in time"))
            }
        }
    }

    /// Stops accepting, lets in-flight calls finish (within `--exit-timeout-secs`) and returns
    /// once the server has ended. Nothing happens when it is not running.
    fn stop(&mut self, py: Python<'_>) -> PyResult<()> {
        self.check_pid()?;
        let Some(running) = self.running.take() else { return Ok(()) };
        running.stop.cancel();
        // Calls still running need the GIL to finish.
        let thread = running.thread;
        match py.detach(move || thread.join()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PyRuntimeError::new_err(format!("the server ended with an error: {e}"))),
            Err(_) => Err(PyRuntimeError::new_err("the server's thread panicked")),
        }
    }

    #[getter]
    fn running(&self) -> bool {
        self.running.is_some()
    }

    /// The gRPC port it listens on (the one bound, when 0 was asked), once started.
    #[getter]
    fn grpc_port(&self) -> Option<u16> {
        self.running.as_ref().and_then(|r| r.at.grpc).map(|a| a.port())
    }

    #[getter]
    fn http_port(&self) -> Option<u16> {
        self.running.as_ref().and_then(|r| r.at.http).map(|a| a.port())
    }

    #[getter]
    fn metrics_port(&self) -> Option<u16> {
        self.running.as_ref().and_then(|r| r.at.metrics).map(|a| a.port())
    }

    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for Server {
    /// A started server nobody can reach any more stops (without waiting for it).
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
    }
}

impl Server {
    fn check_pid(&self) -> PyResult<()> {
        if std::process::id() != self.pid {
            return Err(PyRuntimeError::new_err(
                "this tritium.Server was created in another process (before a fork); its threads are not here: create a new one",
            ));
        }
        Ok(())
    }
}

/// The server thread: a runtime of its own, serving until `stop` is cancelled.
fn serve(
    args: ServeArgs,
    config: tritium_server::ServerConfig,
    backends: BackendRegistry,
    ready: mpsc::SyncSender<Result<Listening, String>>,
    handles: mpsc::SyncSender<(Arc<ModelRepository>, tokio::runtime::Handle)>,
    stop: CancellationToken,
) -> Result<(), String> {
    let log = LogControl::install(&args.logging);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tritium-runtime")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let announce = move |at: Listening| {
        let _ = ready.try_send(Ok(at));
    };
    let handle = runtime.handle().clone();
    let shutdown = move |tritium: &tritium_server::Tritium| {
        let _ = handles.try_send((Arc::clone(tritium.repository()), handle));
        async move { stop.cancelled().await }
    };
    let outcome =
        runtime.block_on(tritium_server::cli::serve(&args, config, log, backends, announce, shutdown)).map_err(|e| e.to_string());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}
