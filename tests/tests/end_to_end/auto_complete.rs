//! The backend seam's auto-complete and warmup, with a backend of the test's own (`double`,
//! recognized by `1/model.double`): a folder without `config.pbtxt` is served once the backend
//! fills in its config, not with `--disable-auto-complete-config`; `model_warmup` samples run
//! through the backend before the model is ready. The ONNX Runtime backend's own rules are
//! checked with real models in tests/python/onnx/test_onnxruntime.py.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::net::TcpListener;
use tritium_grpc_clients::{InferClient, output_tensor};
use tritium_proto::inference::{DataType as ConfigDataType, ModelConfig, ModelInput, ModelOutput};
use tritium_server::ServerConfig;
use tritium_tensor::Tensor;
use tritium_tests::identity_request;
use tritium_worker::{Backend, BackendError, BackendRegistry, BackendRequest, Engine, RepositoryOptions, Responder};
use tritium_worker::{BackendContext, BackendFactory};

/// OUTPUT0 = 2 × INPUT0 (FP32); counts the requests it runs.
struct Double {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Backend for Double {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let input = request.input("INPUT0")?;
        let doubled: Vec<f32> = input.to_vec::<f32>()?.iter().map(|x| x * 2.0).collect();
        responder.send(vec![Tensor::from_slice("OUTPUT0", input.shape.clone(), &doubled)]).await
    }
}

#[derive(Clone)]
struct DoubleFactory {
    runs: Arc<AtomicUsize>,
}

impl BackendFactory for DoubleFactory {
    fn create(&self, _context: &BackendContext<'_>) -> Result<Engine, String> {
        Ok(Engine::tensors(Double { runs: Arc::clone(&self.runs) }))
    }

    fn model_filename(&self) -> Option<&'static str> {
        Some("model.double")
    }

    fn auto_complete_config(&self, config: &mut ModelConfig, _model_dir: Option<&Path>) -> Result<(), String> {
        if config.input.is_empty() {
            let data_type = ConfigDataType::TypeFp32 as i32;
            config.input = vec![ModelInput { name: "INPUT0".into(), data_type, dims: vec![-1], ..Default::default() }];
            config.output = vec![ModelOutput { name: "OUTPUT0".into(), data_type, dims: vec![-1], ..Default::default() }];
        }
        Ok(())
    }
}

/// Serves `repository` with the `double` backend; returns the server, a client and the run count.
async fn serve(repository: &Path, auto_complete_config: bool) -> (tritium_server::ServerHandle, InferClient, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut backends = BackendRegistry::default();
    backends.register("double", DoubleFactory { runs: Arc::clone(&runs) });
    let config = ServerConfig {
        repository: RepositoryOptions {
            paths: vec![repository.to_path_buf()],
            auto_complete_config,
            ..RepositoryOptions::default()
        },
        ..ServerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
    let server = tritium_server::spawn_with_backends(config, listener, backends).await.expect("server starts");
    let client = InferClient::connect(format!("http://{}", server.grpc_addr())).await.expect("client connects");
    (server, client, runs)
}

fn write(repository: &Path, model: &str, config: Option<&str>) {
    let version = repository.join(model).join("1");
    std::fs::create_dir_all(&version).expect("model folder");
    std::fs::write(version.join("model.double"), b"weights").expect("model file");
    if let Some(config) = config {
        std::fs::write(repository.join(model).join("config.pbtxt"), config).expect("config");
    }
}

#[tokio::test]
async fn a_folder_without_config_is_served_by_the_backend_whose_file_it_holds() {
    let repository = tempfile::tempdir().expect("repository");
    write(repository.path(), "bare", None);
    let (_server, mut client, _runs) = serve(repository.path(), true).await;
    let config = client.model_config("bare", "").await.expect("config");
    assert_eq!(config.backend, "double");
    assert_eq!(config.input[0].name, "INPUT0");
    let response = client.infer(identity_request("bare", vec![2], &[1.5, -2.0])).await.expect("served");
    let output = output_tensor(&response, "OUTPUT0").expect("OUTPUT0").to_vec::<f32>().expect("FP32");
    assert_eq!(output, [3.0, -4.0]);
}

#[tokio::test]
async fn with_auto_complete_off_a_folder_without_config_does_not_load() {
    let repository = tempfile::tempdir().expect("repository");
    write(repository.path(), "bare", None);
    let (server, mut client, _runs) = serve(repository.path(), false).await;
    assert!(!client.model_ready("bare", "").await.unwrap_or(false));
    let index = server.repository().index(false).expect("index");
    let entry = index.iter().find(|e| e.name == "bare").expect("listed");
    assert!(entry.reason.contains("no config.pbtxt"), "{entry:?}");
}

#[tokio::test]
async fn warmup_samples_run_before_the_model_is_ready() {
    let repository = tempfile::tempdir().expect("repository");
    let config = "backend: \"double\"\nmax_batch_size: 4\n\
                  model_warmup [ { name: \"zeros\" batch_size: 3 count: 2\n\
                  inputs { key: \"INPUT0\" value: { data_type: TYPE_FP32 dims: [ 5 ] zero_data: true } } } ]\n";
    write(repository.path(), "warm", Some(config));
    let (_server, mut client, runs) = serve(repository.path(), true).await;
    assert!(client.model_ready("warm", "").await.expect("ready"));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the sample ran count times, as one batch of 3 each");
}
