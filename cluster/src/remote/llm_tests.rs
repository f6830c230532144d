//! Language and embedding models through the worker plane, on the real models
//! `scripts/fetch-models.sh` installs (a missing model fails the test with that command).

use std::time::Duration;

use futures::StreamExt;
use tritium_backend_api::llm::{
    FinishReason, GenerateError, GenerateEvent, GenerateRequest, ModelKind, SamplingOptions, StopOptions, TokenStream,
};
use tritium_llm::test_models::{MINILM_DIR, SMOLLM2_GGUF, installed_model};
use tritium_proto::ErrorCode;
use tritium_proto::worker::worker_client::WorkerClient as WorkerRpc;
use tritium_worker::{LocalWorker, WorkerClient};

use super::tests::{TestWorker, declared};
use super::ORIGIN_KEY;

const DEADLINE: Duration = Duration::from_secs(120);
/// "The capital of France is" in SmolLM2's vocabulary; any valid ids would do.
const PROMPT: [u32; 5] = [504, 3575, 282, 4649, 314];

pub(super) fn config(name: &str, backend: &str, path: &std::path::Path) -> String {
    let quoted = serde_json::to_string(&path.display().to_string()).expect("a path quotes");
    format!("name: \"{name}\"\nbackend: \"{backend}\"\nparameters {{ key: \"model_path\" value {{ string_value: {quoted} }} }}\n")
}

fn greedy(max_tokens: u32, ignore_eos: bool) -> GenerateRequest {
    GenerateRequest {
        prompt: PROMPT.to_vec(),
        sampling: SamplingOptions { temperature: 0.0, ..Default::default() },
        stop: StopOptions { max_tokens: Some(max_tokens), ignore_eos, ..Default::default() },
        logprobs: None,
        ..Default::default()
    }
}

async fn next(tokens: &mut TokenStream) -> Option<Result<GenerateEvent, GenerateError>> {
    tokio::time::timeout(DEADLINE, tokens.next()).await.expect("the next event in time")
}

/// Token ids until Finished, and Finished's reason and counts.
pub(super) async fn collect(mut tokens: TokenStream) -> (Vec<u32>, FinishReason, u32, u32) {
    let mut ids = Vec::new();
    loop {
        match next(&mut tokens).await.expect("events until Finished").expect("no error") {
            GenerateEvent::Token(token) => ids.push(token.id),
            GenerateEvent::PromptLogprobs(_) => {}
            GenerateEvent::Finished { reason, prompt_tokens, completion_tokens, .. } => {
                return (ids, reason, prompt_tokens, completion_tokens);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_generation_matches_the_local_one_and_dropping_it_cancels_the_sequence() {
    let repository = declared(&[("smollm2", config("smollm2", "tritium_llm", &installed_model(SMOLLM2_GGUF)))]);
    let mut worker = TestWorker::start(std::sync::Arc::clone(&repository));
    let remote = worker.client();

    let models = remote.describe_models().await.expect("describes");
    let card = models.iter().find(|m| m.name == "smollm2").and_then(|m| m.card.clone()).expect("a language model's card");
    assert_eq!(card.kind, ModelKind::Generate);

    let (ids, reason, prompt_tokens, completion_tokens) =
        collect(remote.generate("smollm2", greedy(4, false)).await.expect("starts")).await;
    let local = LocalWorker::new(std::sync::Arc::clone(&repository));
    let (local_ids, ..) = collect(local.generate("smollm2", greedy(4, false)).await.expect("starts")).await;
    assert_eq!(ids.len(), 4);
    assert_eq!(ids, local_ids, "greedy remote and in-process generations agree");
    assert_eq!((reason, prompt_tokens, completion_tokens), (FinishReason::Length, 5, 4));

    // A version on the wire resolves through the repository, through the raw RPC and the client.
    let channel = tonic::transport::Endpoint::from_shared(worker.uri.clone()).expect("a uri").connect().await.expect("connects");
    let mut rpc = WorkerRpc::new(channel);
    let versioned = |version| GenerateRequest { model_version: Some(version), ..greedy(1, false) };
    let request = super::convert::generate_request_to_proto("smollm2", versioned(7));
    let status = rpc.generate(request).await.expect_err("no version 7");
    assert_eq!(status.code(), ErrorCode::NotFound.grpc_code());
    assert!(status.metadata().get(ORIGIN_KEY).is_some(), "marked as the worker's");
    let request = super::convert::generate_request_to_proto("smollm2", versioned(1));
    assert!(rpc.generate(request).await.is_ok(), "version 1 is served");
    let error = remote.generate("smollm2", versioned(7)).await.expect_err("the client sends the version it is given");
    assert_eq!(error.to_string(), "Request for unknown model: 'smollm2' version 7 is not found");

    let engine = repository.resolve("smollm2", None).expect("served").language_model().expect("a language model");
    let cancelled_before = engine.stats().sequences_cancelled;
    let mut tokens = remote.generate("smollm2", greedy(500, true)).await.expect("starts");
    assert!(matches!(next(&mut tokens).await, Some(Ok(GenerateEvent::Token(_)))));
    drop(tokens);
    tokio::time::timeout(DEADLINE, async {
        while engine.stats().sequences_cancelled == cancelled_before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("dropping the remote stream cancels the sequence in the engine");

    // A worker that dies mid-generation ends the stream with an error the router can migrate on.
    let mut tokens = remote.generate("smollm2", greedy(500, true)).await.expect("starts");
    assert!(matches!(next(&mut tokens).await, Some(Ok(GenerateEvent::Token(_)))));
    worker.kill();
    loop {
        match next(&mut tokens).await {
            Some(Ok(GenerateEvent::Token(_))) => continue,
            Some(Err(error)) => {
                assert!(matches!(error, GenerateError::WorkerLost { .. }), "{error:?}");
                assert_eq!(error.code(), ErrorCode::Internal);
                break;
            }
            other => panic!("expected the worker to be unreachable, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_embeddings_match_the_local_ones() {
    let repository = declared(&[("minilm", config("minilm", "tritium_embed", &installed_model(MINILM_DIR)))]);
    let worker = TestWorker::start(std::sync::Arc::clone(&repository));
    let remote = worker.client();
    let models = remote.describe_models().await.expect("describes");
    let card = models.iter().find(|m| m.name == "minilm").and_then(|m| m.card.clone()).expect("an embedder's card");
    assert_eq!(card.kind, ModelKind::Embed);

    let inputs = vec![vec![101, 7592, 2088, 102], vec![101, 102]];
    let vectors = remote.embed("minilm", inputs.clone()).await.expect("embeds");
    let local = LocalWorker::new(repository).embed("minilm", inputs).await.expect("embeds");
    assert_eq!(vectors.len(), 2);
    assert!(!vectors[0].is_empty());
    assert_eq!(vectors, local);

    let error = remote.embed("minilm", vec![vec![999_999]]).await.expect_err("outside the vocabulary");
    assert_eq!(error.code(), ErrorCode::InvalidArg);
    assert!(error.to_string().contains("outside the vocabulary"), "{error}");
}
