//! Adding a model of your own: implement `Backend`, register a factory under a backend name, and
//! point a `config.pbtxt` at it. This example serves a `scale` model (OUTPUT0 = INPUT0 * factor,
//! the factor read from the config's parameters), calls it once over gRPC, and stops.
//!
//! Run it with `cargo run -p tritium-server --example custom_backend`.

use async_trait::async_trait;
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_server::{ServerConfig, spawn_with_backends};
use tritium_tensor::Tensor;
use tritium_worker::{
    Backend, BackendContext, BackendError, BackendRegistry, BackendRequest, Engine, RepositoryOptions, Responder,
};

/// Multiplies every FP32 element of INPUT0 by a factor from the model's config.
struct Scale {
    factor: f32,
}

#[async_trait]
impl Backend for Scale {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input("INPUT0")?;
        let scaled: Vec<f32> = input.to_vec::<f32>()?.iter().map(|x| x * self.factor).collect();
        responder.send(vec![Tensor::from_slice("OUTPUT0", input.shape.clone(), &scaled)]).await
    }
}

fn scale_factory(context: &BackendContext<'_>) -> Result<Engine, String> {
    let factor = context.params().text("factor").map(|text| text.parse::<f32>()).transpose();
    let factor = factor.map_err(|e| format!("parameter 'factor': {e}"))?.unwrap_or(1.0);
    Ok(Engine::tensors(Scale { factor }))
}

const CONFIG: &str = r#"
name: "scale"
backend: "scale"
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
parameters { key: "factor" value { string_value: "2.5" } }
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A model repository in Triton's layout: <repo>/scale/config.pbtxt and a version folder.
    let repository = tempfile::tempdir()?;
    std::fs::create_dir_all(repository.path().join("scale/1"))?;
    std::fs::write(repository.path().join("scale/config.pbtxt"), CONFIG)?;

    let mut backends = BackendRegistry::default();
    backends.register("scale", scale_factory);

    let config = ServerConfig {
        repository: RepositoryOptions { paths: vec![repository.path().to_path_buf()], ..Default::default() },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = spawn_with_backends(config, listener, backends).await?;

    let mut client = InferClient::connect(format!("http://{}", server.grpc_addr())).await?;
    let request = InferRequestBuilder::new("scale").input(Tensor::from_slice("INPUT0", vec![3], &[1.0f32, 2.0, 4.0])).build();
    let response = client.infer(request).await?;
    let output = output_tensor(&response, "OUTPUT0")?.to_vec::<f32>()?;
    println!("scale([1, 2, 4]) = {output:?}");
    assert_eq!(output, vec![2.5, 5.0, 10.0]);

    server.shutdown().await;
    Ok(())
}
