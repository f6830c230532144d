//! What a backend factory builds for a model version: an [`Engine`] of one of three kinds. Only a
//! tensor engine runs KServe tensors through the schedulers; a language model or an embedder is
//! driven by the frontend with token ids, and the core answers tensor requests sent to it.

use std::sync::Arc;

use crate::backend::Backend;
use crate::llm::{EmbeddingModel, LanguageModel};

#[derive(Clone)]
pub enum Engine {
    /// Tensors in, tensors out, through the model's scheduler.
    Tensors(Arc<dyn Backend>),
    /// A causal language model: token ids in, token ids out (completions, chat, KServe
    /// `text_input` through the frontend's bridge).
    Language(Arc<dyn LanguageModel>),
    /// A sentence embedder: `/v1/embeddings`.
    Embedding(Arc<dyn EmbeddingModel>),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Tensors(_) => "Engine::Tensors",
            Engine::Language(_) => "Engine::Language",
            Engine::Embedding(_) => "Engine::Embedding",
        })
    }
}

impl Engine {
    /// A tensor engine from a backend.
    pub fn tensors(backend: impl Backend) -> Engine {
        Engine::Tensors(Arc::new(backend))
    }

    pub fn language_model(&self) -> Option<&Arc<dyn LanguageModel>> {
        match self {
            Engine::Language(model) => Some(model),
            _ => None,
        }
    }

    pub fn embedding_model(&self) -> Option<&Arc<dyn EmbeddingModel>> {
        match self {
            Engine::Embedding(model) => Some(model),
            _ => None,
        }
    }
}
