//! A language model declared in a repository folder (`backend: "tritium_llm"`), served beside a
//! tensor model, over gRPC: its KServe face, unary and streamed generation, and errors.

use std::time::Duration;

use futures::StreamExt;
use tritium_grpc_clients::{InferRequestBuilder, is_final, output_tensor};
use tritium_llm::test_models::{SMOLLM2_GGUF, installed_model};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_tensor::Tensor;
use tritium_tests::{TestServer, identity_config, identity_request, temp_repository, write_model};
use tritium_worker::{ControlMode, RepositoryOptions};

async fn server() -> TestServer {
    let repository = temp_repository();
    write_model(repository.path(), "identity", &identity_config("identity", "TYPE_FP32", 0), &[1]);
    let llm_dir = write_model(
        repository.path(),
        "smollm2",
        "backend: \"tritium_llm\"\nparameters { key: \"model_path\" value { string_value: \"weights.gguf\" } }\n",
        &[1],
    );
    std::os::unix::fs::symlink(installed_model(SMOLLM2_GGUF), llm_dir.join("weights.gguf"))
        .expect("links the weights into the model folder");
    TestServer::with_repository(repository, RepositoryOptions { control_mode: ControlMode::None, ..Default::default() }).await
}

fn prompt(text: &str, streaming: bool, max_tokens: i64) -> InferRequestBuilder {
    InferRequestBuilder::new("smollm2")
        .id("q")
        .input(Tensor::from_byte_strings("text_input", vec![1], [text]))
        .input(Tensor::from_slice("streaming", vec![1], &[streaming]))
        .parameter("max_tokens", ParameterChoice::Int64Param(max_tokens))
        .parameter("temperature", ParameterChoice::DoubleParam(0.0))
}

fn text(response: &tritium_proto::inference::ModelInferResponse, name: &str) -> Vec<String> {
    let tensor = output_tensor(response, name).expect("has the output");
    tensor.byte_strings().expect("BYTES").iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
}

#[tokio::test]
async fn a_repository_llm_serves_text_beside_a_tensor_model() {
    let server = server().await;
    let mut client = server.client().await;

    let metadata = client.model_metadata("smollm2", "").await.expect("metadata");
    let inputs: Vec<(&str, &str)> = metadata.inputs.iter().map(|t| (t.name.as_str(), t.datatype.as_str())).collect();
    assert_eq!(
        inputs,
        [("text_input", "BYTES"), ("streaming", "BOOL"), ("sampling_parameters", "BYTES"), ("exclude_input_in_output", "BOOL")]
    );
    let outputs: Vec<&str> = metadata.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(outputs, ["text_output", "finish_reason"]);
    let config = client.model_config("smollm2", "").await.expect("config");
    assert!(config.model_transaction_policy.is_some_and(|p| p.decoupled));

    // Unary: the whole completion at once.
    let response = client.infer(prompt("The capital of France is", false, 4).build()).await.expect("infer");
    let whole = text(&response, "text_output").concat();
    assert!(whole.starts_with(" Paris"), "{whole:?}");
    assert_eq!(text(&response, "finish_reason"), ["length"]);

    // Streamed: one response per delta, the last one final with the finish reason.
    let (sender, mut responses) = client.stream().await.expect("stream");
    sender.send(prompt("The capital of France is", true, 4).build()).await.expect("sends");
    let mut pieces = Vec::new();
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(120), responses.next())
            .await
            .expect("a response in time")
            .expect("the stream is open")
            .expect("no transport error");
        assert!(reply.error_message.is_empty(), "{}", reply.error_message);
        let response = reply.infer_response.expect("a response");
        pieces.push(text(&response, "text_output").concat());
        if is_final(&response) == Some(true) {
            assert_eq!(text(&response, "finish_reason"), ["length"]);
            break;
        }
        assert!(output_tensor(&response, "finish_reason").expect("present").byte_strings().expect("BYTES").is_empty());
    }
    assert!(pieces.len() > 1, "streaming sent one response: {pieces:?}");
    assert_eq!(pieces.concat(), whole, "streamed and unary greedy text agree");

    // A bad request gets its error in-band; the stream and the tensor model go on working.
    let bad = prompt("hi", true, 4).parameter("temperature", ParameterChoice::StringParam("hot".into())).id("bad");
    sender.send(bad.build()).await.expect("sends");
    let reply = responses.next().await.expect("open").expect("no transport error");
    assert!(reply.error_message.contains("temperature"), "{}", reply.error_message);
    assert_eq!(reply.infer_response.expect("labelled").id, "bad");
    let echoed = client.infer(identity_request("identity", vec![2], &[1.0, 2.0])).await.expect("identity");
    assert_eq!(output_tensor(&echoed, "OUTPUT0").expect("output").to_vec::<f32>().expect("FP32"), vec![1.0, 2.0]);
}
