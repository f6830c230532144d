//! The `tritium` command line as a library function: the binary and the Python package
//! (`python -m tritium`, `tritium.Server`) parse and serve through the same code.

use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::process::ExitCode;

use clap::FromArgMatches;
use tritium_worker::{BackendRegistry, ModelRepository};

use crate::config::RequestPlaneConfig;
use crate::config::{Cli, Command, ServeArgs, WorkerArgs, WorkerConfig};
use crate::logging::LogControl;
use tritium_cluster::remote::{Dialer, NatsPlane};
use tritium_cluster::node::{PlaneListener, WorkerNode, default_worker_id};
use crate::{ServerConfig, Tritium};

/// Runs the command line `args` (the program name first) to its end, as the `tritium` binary.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = Cli::command_with_env();
    let matches = command.clone().get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(path) = &cli.dump_config_to
        && let Err(e) = crate::config::dump::dump(&command, &matches, path)
    {
        eprintln!("tritium: {e}");
        return ExitCode::FAILURE;
    }
    let (logging, runtime) = match &cli.command {
        Command::Serve(args) => (&args.logging, &args.runtime),
        Command::Worker(args) => (&args.logging, &args.runtime),
    };
    let log = LogControl::install(logging);
    let max_blocking = runtime.max_blocking_threads;
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tritium: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("runtime: {} worker threads, at most {max_blocking} blocking threads", runtime.metrics().num_workers());
    let run = async move {
        match cli.command {
            Command::Serve(args) => serve_cli(args, log).await,
            Command::Worker(args) => worker(args).await,
        }
    };
    let outcome = runtime.block_on(run);
    // A blocking task can be stuck in a system call (a model load reading a slow disk); dropping
    // the runtime would wait for it forever, so SIGTERM would not end the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tritium: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a server started by [`serve`] listens, once its models are loaded.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// `None` with `--no-kserve-grpc-server`.
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// How long the calls a hard stop ended have to send their endings (error events, 503s,
/// UNAVAILABLE) before the process exits anyway.
const HARD_STOP_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// A listener handed over as a file descriptor, or bound at `addr`.
async fn listener(fd: Option<i32>, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match fd {
        // SAFETY: the caller handed this descriptor over for us to own (systemd-style socket passing).
        Some(fd) => {
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            // A descriptor handed over arrives inheritable: close it on exec, or every process the
            // server starts (a Python model's stub and its helpers) would hold the port open.
            // SAFETY: fcntl on a descriptor this function owns.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        }
        None => tokio::net::TcpListener::bind(addr).await,
    }
}

/// `tritium serve`: the ready line on stdout, stopped by SIGINT/SIGTERM (or the interactive chat's end).
async fn serve_cli(args: ServeArgs, log: LogControl) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.server_config()?;
    for inert in args.router.inert() {
        tracing::warn!("{inert}");
    }
    if config.cluster.is_distributed() && matches!(config.cluster.events, tritium_cluster::events::EventsConfig::None) {
        tracing::warn!(
            "--event-plane none: remote workers' KV events and load reports do not reach this frontend, so kv routing \
             finds no cached prefixes (--no-router-kv-events predicts them from this frontend's own requests) and the \
             load-based modes count only this frontend's requests"
        );
    }
    let announce = |at: Listening| {
        // One line on stdout once models are loaded, for scripts and test harnesses to wait on.
        let mut ready = "tritium ready".to_string();
        if let Some(grpc_addr) = at.grpc {
            ready.push_str(&format!(" grpc={grpc_addr}"));
        }
        if let Some(http_addr) = at.http {
            ready.push_str(&format!(" http={http_addr}"));
        }
        if let Some(metrics_addr) = at.metrics {
            ready.push_str(&format!(" metrics={metrics_addr}"));
        }
        println!("{ready}");
        let _ = std::io::stdout().flush();
    };
    let interactive = args.openai.interactive && !args.openai.no_interactive;
    let stop = move |tritium: &Tritium| {
        let llm = interactive.then(|| tritium.llm());
        let signal = shutdown_signal();
        async move {
            match llm {
                // The session's end stops the server, as a signal does.
                Some(llm) => {
                    tokio::select! {
                        () = signal => {}
                        ended = crate::llm::interactive::chat(llm) => {
                            if let Err(error) = ended {
                                tracing::warn!("the interactive chat ended: {error}");
                            }
                        }
                    }
                }
                None => signal.await,
            }
        }
    };
    serve(&args, config, log, BackendRegistry::default(), announce, stop).await
}

/// Serves `args` with `config` (built from them, perhaps amended) and `backends` beside the
/// built-in ones; `ready` is told the addresses once the models are loaded; the server stops
/// when the future `shutdown` makes completes, draining for `--exit-timeout-secs`.
pub async fn serve<F>(
    args: &ServeArgs,
    config: ServerConfig,
    log: LogControl,
    backends: BackendRegistry,
    ready: impl FnOnce(Listening) + Send,
    shutdown: impl FnOnce(&Tritium) -> F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let metrics = match (args.metrics.allow_metrics, args.metrics.metrics_listen_fd) {
        (true, fd) => Some(listener(fd, args.metrics.addr()).await?),
        // A socket handed over for metrics that are off is closed, so scrapers are refused rather
        // than left waiting on a listener nobody reads.
        (false, Some(fd)) => {
            drop(listener(Some(fd), args.metrics.addr()).await?);
            None
        }
        (false, None) => None,
    };
    let grpc = match (args.grpc.own_port(), args.grpc.grpc_listen_fd) {
        (true, fd) => Some(listener(fd, args.grpc_addr()).await?),
        // As for metrics: a socket handed over for a port that is off is closed.
        (false, Some(fd)) => {
            drop(listener(Some(fd), args.grpc_addr()).await?);
            None
        }
        (false, None) => None,
    };
    let http = match args.http.allow_http {
        true => Some(listener_for_http(args).await?),
        false => None,
    };
    let tritium = tokio::task::spawn_blocking(move || Tritium::with_backends(config, log, backends)).await??;
    let at = Listening {
        grpc: grpc.as_ref().map(|g| g.local_addr()).transpose()?,
        http: http.as_ref().map(|h| h.local_addr()).transpose()?,
        metrics: metrics.as_ref().map(|m| m.local_addr()).transpose()?,
    };
    match (at.grpc, at.http) {
        (Some(grpc_addr), _) => tracing::info!("serving gRPC on {grpc_addr}"),
        (None, Some(http_addr)) if args.grpc.serves_grpc() => {
            tracing::info!("serving gRPC on the HTTP port {http_addr} only (--kserve-grpc-server without --grpc-port)")
        }
        _ => tracing::info!("KServe gRPC is off (--no-kserve-grpc-server)"),
    }
    if let Some(http_addr) = at.http {
        tracing::info!("serving HTTP on {http_addr}");
    }
    if let Some(metrics_addr) = at.metrics {
        tracing::info!("serving metrics on {metrics_addr}");
    }
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = std::sync::Arc::clone(&stopping);
    let stop = shutdown(&tritium);
    let signal = async move {
        stop.await;
        notify.notify_one();
    };
    let exit_timeout = std::time::Duration::from_secs(args.exit_timeout_secs);
    let hard_stop = tritium.hard_stop();
    let served = tritium.serve_all_then(grpc, http, metrics, signal, move || ready(at));
    tokio::pin!(served);
    tokio::select! {
        served = &mut served => served?,
        () = async { stopping.notified().await; tokio::time::sleep(exit_timeout).await } => {
            // Every call still running ends now with an error of its protocol, so that no client
            // is cut off without a word; the process exits once they are sent, or soon anyway.
            tracing::warn!("calls still in flight after {exit_timeout:?}; ending them");
            hard_stop.cancel();
            match tokio::time::timeout(HARD_STOP_FLUSH, &mut served).await {
                Ok(served) => served?,
                Err(_) => tracing::warn!("calls still open {HARD_STOP_FLUSH:?} after they were ended; exiting anyway"),
            }
        }
    }
    // Python models' finalize runs before the process ends, as on an unload.
    tokio::task::spawn_blocking(crate::backends::stop_all).await?;
    Ok(())
}

async fn worker(args: WorkerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.worker_config()?;
    let announce = |at: WorkerListening| {
        match at.addr {
            Some(addr) => println!("tritium worker ready grpc={addr} id={}", at.id),
            None => println!("tritium worker ready at={} id={}", at.address, at.id),
        }
        let _ = std::io::stdout().flush();
    };
    serve_worker(&args, config, BackendRegistry::default(), announce, shutdown_signal()).await
}

/// Where a worker started by [`serve_worker`] serves, once its models are loaded.
#[derive(Debug, Clone)]
pub struct WorkerListening {
    /// The bound TCP address; none on the NATS request plane.
    pub addr: Option<SocketAddr>,
    /// What discovery advertises: the URI frontends dial, or `nats:` and its subject stem.
    pub address: String,
    pub id: String,
}

/// `tritium worker` as a library function: serves `args` with `config` (built from them, perhaps
/// amended) and `backends` beside the built-in ones, registered in discovery; `ready` is told the
/// address and id once the models are loaded and the worker is registered; `shutdown` completing
/// deregisters and drains.
pub async fn serve_worker(
    args: &WorkerArgs,
    mut config: WorkerConfig,
    backends: BackendRegistry,
    ready: impl FnOnce(WorkerListening),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error>> {
    let id = args.listen.worker_id.clone().unwrap_or_else(default_worker_id);
    let (listener, addr) = match &config.node.cluster.request_plane {
        RequestPlaneConfig::Tcp => {
            let listener = listener(args.listen.worker_listen_fd, args.listen.addr()).await?;
            let addr = listener.local_addr()?;
            if !addr.ip().is_loopback() && config.node.worker_token.is_none() {
                return Err(format!(
                    "the worker plane listens on {addr}, which is not loopback: give --worker-token \
                     (TRITIUM_WORKER_TOKEN), and the same to the frontends, so only they are served"
                )
                .into());
            }
            let tls = config.node.cluster.plane_tls.server()?;
            (PlaneListener::Tcp { listener, advertised: args.listen.advertised_uri(addr), tls }, Some(addr))
        }
        RequestPlaneConfig::Nats { url } => {
            let plane = NatsPlane::connect_reporting(url, &id, &config.node.cluster.health).await?;
            let max = args.listen.request_plane_max_connections as usize;
            let listener = plane.listen(&config.node.cluster.scope.own, &id, max).await?;
            // Prefill workers this one pulls from may be on the NATS plane too.
            config.node.transfers.dialer = Dialer::nats(plane);
            (PlaneListener::Nats(listener), None)
        }
    };
    // Prefill workers this one pulls KV blocks from are dialed over the plane's TLS too.
    let dialing_tls = config.node.cluster.plane_tls.client()?;
    config.node.transfers.dialer = std::mem::take(&mut config.node.transfers.dialer).with_tls(dialing_tls);
    let address = listener.address();
    let WorkerConfig { repository, backends: settings, node } = config;
    let repository = tokio::task::spawn_blocking(move || {
        ModelRepository::open(repository, crate::backends::backend_registry(&settings, backends))
    })
    .await??;
    let node = WorkerNode::new(node, repository);
    tracing::info!(worker = %id, %address, "serving the worker plane");
    let drain_timeout = std::time::Duration::from_secs(args.exit_timeout_secs);
    let listening = WorkerListening { addr, address, id: id.clone() };
    node.serve(listener, id, shutdown, drain_timeout, move || ready(listening)).await?;
    tokio::task::spawn_blocking(crate::backends::stop_all).await?;
    Ok(())
}

async fn listener_for_http(args: &ServeArgs) -> std::io::Result<tokio::net::TcpListener> {
    listener(args.http.http_listen_fd, args.http_addr()).await
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal that comes between "ready" and the first poll must not kill
/// the process with the default action, skipping the deregistration and the drain.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        match signals {
            Ok((mut interrupt, mut term)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}
