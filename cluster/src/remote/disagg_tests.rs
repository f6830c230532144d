//! KV blocks moving from a prefill worker to a decode worker over the worker plane, with the real
//! SmolLM2: the decode worker's tokens are those it makes alone, whatever the prefill worker does
//! (answers, sends another layout, dies, or is full).

use std::sync::Arc;
use std::time::Duration;

use tritium_backend_api::llm::{GenerateRequest, LanguageModel, PrefillSource, SamplingOptions, StopOptions};
use tritium_llm::test_models::{SMOLLM2_GGUF, installed_model};
use tritium_proto::worker::PrefillRequest;
use tritium_proto::worker::worker_client::WorkerClient as WorkerRpc;
use tritium_worker::{LocalWorker, ModelRepository, WorkerClient};

use super::llm_tests::{collect, config};
use super::tests::{TestWorker, declared};
use super::{TransferOptions, WorkerService};

/// 200 prompt tokens: twelve full blocks and the last one's eight.
fn long_request() -> GenerateRequest {
    GenerateRequest {
        prompt: (0..200u32).map(|i| 100 + (i * 7919) % 40_000).collect(),
        sampling: SamplingOptions { temperature: 0.0, ..Default::default() },
        stop: StopOptions { max_tokens: Some(6), ignore_eos: true, ..Default::default() },
        ..Default::default()
    }
}

fn smollm2(block_size: usize) -> Arc<ModelRepository> {
    let mut text = config("smollm2", "tritium_llm", &installed_model(SMOLLM2_GGUF));
    text.push_str(&format!(
        "parameters {{ key: \"max_kv_tokens\" value {{ string_value: \"2048\" }} }}\n\
         parameters {{ key: \"kv_block_size\" value {{ string_value: \"{block_size}\" }} }}\n"
    ));
    declared(&[("smollm2", text)])
}

fn engine(repository: &ModelRepository) -> Arc<dyn LanguageModel> {
    repository.resolve("smollm2", None).expect("loaded").language_model().expect("a language model").clone()
}

fn source(worker: &TestWorker, first_block: u32) -> PrefillSource {
    PrefillSource { worker_id: "prefill-1".into(), uri: worker.uri.clone(), first_block }
}

async fn connect(worker: &TestWorker) -> WorkerRpc<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(worker.uri.clone()).expect("a uri");
    WorkerRpc::new(endpoint.connect().await.expect("connects"))
}

/// What the model makes of the long prompt on its own.
async fn alone() -> Vec<u32> {
    let local = LocalWorker::new(smollm2(16));
    collect(local.generate("smollm2", long_request()).await.expect("starts")).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_worker_generates_from_the_prefill_workers_blocks_as_it_would_alone() {
    let (prefill_repository, decode_repository) = (smollm2(16), smollm2(16));
    let prefill = TestWorker::start(Arc::clone(&prefill_repository));
    let decode = TestWorker::start(Arc::clone(&decode_repository));
    let stream = decode.client().generate_with_prefill("smollm2", long_request(), source(&prefill, 0)).await.expect("starts");
    assert_eq!(stream.prefill_worker(), Some("prefill-1"), "the decode worker says where its blocks came from");
    let (ids, ..) = collect(stream).await;
    assert_eq!(ids, alone().await, "greedy tokens as in aggregated serving");
    assert_eq!(
        engine(&decode_repository).stats().prompt_tokens,
        200 - 12 * 16,
        "only the last block computed on the decode worker"
    );
    assert_eq!(engine(&prefill_repository).stats().prompt_tokens, 12 * 16, "the prefill worker computed the full blocks");

    // Blocks the decode worker holds are not asked for again: the prefill worker computes (from its
    // own cache) only the block its blocks end with, and sends nothing.
    let stream = decode.client().generate_with_prefill("smollm2", long_request(), source(&prefill, 12)).await.expect("starts");
    assert_eq!(stream.prefill_worker(), None);
    assert_eq!(collect(stream).await.0, alone().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_of_another_layout_a_dead_prefill_worker_or_a_full_one_leave_the_decode_worker_to_compute() {
    let expected = alone().await;
    // Blocks of 32 positions for a decode worker of 16: refused before anything is computed.
    let other_layout = smollm2(32);
    let prefill = TestWorker::start(Arc::clone(&other_layout));
    let decode_repository = smollm2(16);
    let decode = TestWorker::start(Arc::clone(&decode_repository));
    let stream = decode.client().generate_with_prefill("smollm2", long_request(), source(&prefill, 0)).await.expect("starts");
    assert_eq!(stream.prefill_worker(), None);
    assert_eq!(collect(stream).await.0, expected);
    assert_eq!(engine(&other_layout).stats().prompt_tokens, 0, "the mismatch was found before computing");
    assert_eq!(engine(&decode_repository).stats().prompt_tokens, 200);

    let mut rpc = connect(&prefill).await;
    let layout = engine(&decode_repository).kv_layout().map(|l| super::convert::layout_to_proto(&l));
    let request = PrefillRequest { model: "smollm2".into(), prompt: long_request().prompt, layout, ..Default::default() };
    let refused = rpc.prefill(request.clone()).await.expect_err("another layout is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("block size \"16\" where this engine has \"32\""), "{}", refused.message());

    // A prefill worker that is gone: the decode worker computes everything, and the client sees
    // no error.
    let mut dead = TestWorker::start(smollm2(16));
    let gone = source(&dead, 0);
    dead.kill();
    let stream = decode.client().generate_with_prefill("smollm2", long_request(), gone).await.expect("starts");
    assert_eq!(stream.prefill_worker(), None);
    assert_eq!(collect(stream).await.0, expected);

    // A prefill worker running its one allowed prefill refuses a second one.
    let options = TransferOptions { max_prefills: 1, ..TransferOptions::default() };
    let full = TestWorker::serve(WorkerService::new(smollm2(16)).with_transfers(options), None);
    let mut rpc = connect(&full).await;
    let request = PrefillRequest { layout: None, ..request };
    let mut first = rpc.prefill(request.clone()).await.expect("the first prefill starts").into_inner();
    let second = rpc.prefill(request).await.expect_err("the second is refused");
    assert_eq!(second.code(), tonic::Code::ResourceExhausted);
    assert!(second.message().contains("limit of 1 prefills"), "{}", second.message());
    let mut blocks = 0;
    while let Some(message) =
        tokio::time::timeout(Duration::from_secs(120), first.message()).await.expect("in time").expect("no error")
    {
        blocks += usize::from(matches!(message.part, Some(tritium_proto::worker::kv_transfer::Part::Block(_))));
    }
    assert_eq!(blocks, 12, "the first one sends its twelve blocks");
}
