//! What a version answers to tensors when its engine takes token ids.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use tritium_backend_api::llm::{EmbeddingModel, GenerateError, ModelCard, ModelKind};
use tritium_backend_api::{BackendRequest, Engine, Responder};
use tritium_proto::ErrorCode;

use super::tensor_face;

struct Embedder(Arc<ModelCard>);

#[async_trait]
impl EmbeddingModel for Embedder {
    fn card(&self) -> &Arc<ModelCard> {
        &self.0
    }

    async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError> {
        Ok(inputs.iter().map(|_| vec![1.0]).collect())
    }
}

fn card() -> Arc<ModelCard> {
    Arc::new(ModelCard {
        kind: ModelKind::Embed,
        tokenizer_json: String::new(),
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_token_ids: Vec::new(),
        add_bos_token: false,
        context_length: 0,
        max_input_tokens: None,
        source: "test".into(),
        default_completion_tokens: Some(tritium_backend_api::llm::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    })
}

#[tokio::test]
async fn an_embedder_refuses_tensors_and_names_its_route() {
    let engine = Engine::Embedding(Arc::new(Embedder(card())));
    let request = BackendRequest {
        inputs: Vec::new(),
        parameters: Vec::new(),
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    };
    let error = tensor_face(&engine, "minilm").execute(request, &mut Responder::single()).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Unsupported);
    assert_eq!(error.to_string(), "the model 'minilm' is an embedding model; use /v1/embeddings");
}
