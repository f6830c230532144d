//! `limit-server`: the thinnest tonic server perf_analyzer can drive, to measure what the
//! transport alone costs. Every model name is an identity model (add_sub keeps its real tensors);
//! inference echoes the raw payloads back with no validation and no backend (see
//! `tritium_bench::limit`). It serves through tonic's own transport (`tonic::transport::Server`)
//! unless `--transport tritium` puts it on the one `tritium serve` uses, to compare the two
//! servers' request handling alone.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::process::ExitCode;

use clap::Parser;
use futures::{Stream, StreamExt};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tritium_bench::limit;
use tritium_proto::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use tritium_proto::inference::*;
use tritium_server::TransportConfig;
use tritium_server::grpc::transport;

/// Zero-copy identity echo over KServe v2 gRPC, for benchmarks.
#[derive(Debug, Parser)]
#[command(name = "limit-server", version)]
struct Args {
    /// gRPC bind address.
    #[arg(long, env = "LIMIT_GRPC_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    grpc_address: IpAddr,
    /// gRPC port (ignored with --grpc-listen-fd).
    #[arg(long, env = "LIMIT_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,
    /// Serve on this inherited, already listening socket instead of binding one.
    #[arg(long, env = "LIMIT_GRPC_LISTEN_FD")]
    grpc_listen_fd: Option<i32>,
    /// HTTP/2 connection-level flow-control window, bytes (tonic's default if unset).
    #[arg(long, env = "LIMIT_GRPC_INITIAL_CONNECTION_WINDOW_SIZE")]
    grpc_initial_connection_window_size: Option<u32>,
    /// HTTP/2 stream-level flow-control window, bytes (tonic's default if unset).
    #[arg(long, env = "LIMIT_GRPC_INITIAL_STREAM_WINDOW_SIZE")]
    grpc_initial_stream_window_size: Option<u32>,
    /// Size windows from a bandwidth-delay estimate (overrides the fixed sizes).
    #[arg(long, env = "LIMIT_GRPC_ADAPTIVE_WINDOW")]
    grpc_adaptive_window: bool,
    /// Largest HTTP/2 frame accepted, bytes.
    #[arg(long, env = "LIMIT_GRPC_MAX_FRAME_SIZE")]
    grpc_max_frame_size: Option<u32>,
    /// Whose HTTP/2 server carries the calls: tonic's (the thinnest stock tonic server) or the one
    /// `tritium serve` drives (server/src/grpc/transport.rs).
    #[arg(long, env = "LIMIT_TRANSPORT", value_enum, default_value_t = Transport::Tonic)]
    transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Tonic,
    Tritium,
}

#[derive(Debug, Clone, Copy)]
struct Limit;

type RpcResult<T> = Result<Response<T>, Status>;

fn reply<T>(value: T) -> RpcResult<T> {
    Ok(Response::new(value))
}

/// The RPCs the limit does not serve. `async_trait` rewrites the impl before this macro expands,
/// so the methods are written in the form it would have produced.
macro_rules! unimplemented_rpcs {
    ($($method:ident($request:ty) -> $response:ty;)*) => {$(
        fn $method<'a, 'b>(&'a self, _: Request<$request>) -> Pin<Box<dyn Future<Output = RpcResult<$response>> + Send + 'b>>
        where
            'a: 'b,
        {
            let status = Status::unimplemented(concat!(stringify!($method), " is not served by the limit server"));
            Box::pin(std::future::ready(Err(status)))
        }
    )*};
}

#[tonic::async_trait]
impl GrpcInferenceService for Limit {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> RpcResult<ServerLiveResponse> {
        reply(ServerLiveResponse { live: true })
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> RpcResult<ServerReadyResponse> {
        reply(ServerReadyResponse { ready: true })
    }

    async fn model_ready(&self, _: Request<ModelReadyRequest>) -> RpcResult<ModelReadyResponse> {
        reply(ModelReadyResponse { ready: true })
    }

    /// No extensions: perf_analyzer then leaves server-side statistics alone.
    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> RpcResult<ServerMetadataResponse> {
        reply(ServerMetadataResponse {
            name: "limit".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: Vec::new(),
        })
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> RpcResult<ModelMetadataResponse> {
        reply(limit::metadata(&request.get_ref().name))
    }

    async fn model_config(&self, request: Request<ModelConfigRequest>) -> RpcResult<ModelConfigResponse> {
        reply(ModelConfigResponse { config: Some(limit::config(&request.get_ref().name)) })
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> RpcResult<ModelInferResponse> {
        reply(limit::echo(request.into_inner()))
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

    /// One request after another on the stream, answered as it is read: no task, no channel.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> RpcResult<Self::ModelStreamInferStream> {
        reply(Box::pin(request.into_inner().map(|request| request.map(limit::stream_echo))))
    }

    unimplemented_rpcs! {
        model_statistics(ModelStatisticsRequest) -> ModelStatisticsResponse;
        repository_index(RepositoryIndexRequest) -> RepositoryIndexResponse;
        repository_model_load(RepositoryModelLoadRequest) -> RepositoryModelLoadResponse;
        repository_model_unload(RepositoryModelUnloadRequest) -> RepositoryModelUnloadResponse;
        system_shared_memory_status(SystemSharedMemoryStatusRequest) -> SystemSharedMemoryStatusResponse;
        system_shared_memory_register(SystemSharedMemoryRegisterRequest) -> SystemSharedMemoryRegisterResponse;
        system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest) -> SystemSharedMemoryUnregisterResponse;
        cuda_shared_memory_status(CudaSharedMemoryStatusRequest) -> CudaSharedMemoryStatusResponse;
        cuda_shared_memory_register(CudaSharedMemoryRegisterRequest) -> CudaSharedMemoryRegisterResponse;
        cuda_shared_memory_unregister(CudaSharedMemoryUnregisterRequest) -> CudaSharedMemoryUnregisterResponse;
        trace_setting(TraceSettingRequest) -> TraceSettingResponse;
        log_settings(LogSettingsRequest) -> LogSettingsResponse;
    }
}

/// The same allocator as `tritium`, so that the two differ only in what they do per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // One worker thread per available core, as `tritium serve` does.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(serve(args)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limit-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = match args.grpc_listen_fd {
        Some(fd) => {
            // SAFETY: the caller handed this descriptor over for us to own (systemd-style socket passing).
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => tokio::net::TcpListener::bind(SocketAddr::new(args.grpc_address, args.grpc_port)).await?,
    };
    let addr = listener.local_addr()?;
    let max = i32::MAX as usize;
    let service = GrpcInferenceServiceServer::new(Limit).max_decoding_message_size(max).max_encoding_message_size(max);
    println!("limit ready grpc={addr}");
    std::io::stdout().flush()?;
    if args.transport == Transport::Tritium {
        let settings = TransportConfig {
            initial_connection_window_size: args.grpc_initial_connection_window_size,
            initial_stream_window_size: args.grpc_initial_stream_window_size,
            adaptive_window: args.grpc_adaptive_window,
            max_frame_size: args.grpc_max_frame_size,
            tcp_keepalive: None,
            ..TransportConfig::default()
        };
        transport::serve(listener, transport::Routes::new(service), &settings, None, std::future::pending()).await;
        return Ok(());
    }
    let mut builder = Server::builder()
        .initial_connection_window_size(args.grpc_initial_connection_window_size)
        .initial_stream_window_size(args.grpc_initial_stream_window_size)
        .max_frame_size(args.grpc_max_frame_size);
    if args.grpc_adaptive_window {
        builder = builder.http2_adaptive_window(Some(true));
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // No shutdown handling: SIGTERM or Ctrl-C ends the process at once, which is all a benchmark needs.
    builder.add_service(service).serve_with_incoming(incoming).await?;
    Ok(())
}
