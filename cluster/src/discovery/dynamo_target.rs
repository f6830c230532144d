//! A Dynamo worker as discovery lists it ([`super::WorkerAddress::Dynamo`]): how its requests
//! reach it and the models it serves, with the cards Tritium tokenizes with. Read from Dynamo's
//! own records by [`crate::dynamo`].

use std::sync::Arc;

use tritium_backend_api::llm::ModelCard;
use tritium_proto::inference::ModelConfig;

/// A record of Dynamo's larger than this is refused unread (a card is a few KiB).
pub const MAX_RECORD_BYTES: u64 = 4 << 20;
/// At most this many records are read from one bucket.
pub const MAX_RECORDS: usize = 65_536;

/// A Dynamo worker instance's request endpoint and the models it serves there.
#[derive(Debug)]
pub struct DynamoTarget {
    /// `{namespace}/{component}/{endpoint}/{instance:x}`.
    pub key: String,
    /// Its instance id (a prefill worker's is named in the requests it prefills).
    pub instance_id: u64,
    /// Aggregated, or its side of a disaggregated deployment (its card's `worker_type`).
    pub mode: super::DisaggregationMode,
    pub endpoint: DynamoEndpoint,
    /// How its request bodies (and so its answers) are encoded.
    pub codec: PayloadCodec,
    pub models: Vec<DynamoModel>,
}

/// A Dynamo worker's payload codec (its record's `request_plane_codec`; JSON when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadCodec {
    Json,
    /// Maps with named fields (Dynamo's default since 1.4).
    Msgpack,
}

impl PayloadCodec {
    pub fn name(self) -> &'static str {
        match self {
            PayloadCodec::Json => "json",
            PayloadCodec::Msgpack => "msgpack",
        }
    }
}

/// How a Dynamo worker's requests reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DynamoEndpoint {
    /// Its TCP listener (`host:port`) and the endpoint path request frames name.
    Tcp { address: String, path: String },
    /// A NATS subject (Dynamo's `DYN_REQUEST_PLANE=nats`); responses still call home over TCP.
    Nats { subject: String },
}

impl std::fmt::Display for DynamoEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DynamoEndpoint::Tcp { address, path } => write!(f, "tcp://{address}/{path}"),
            DynamoEndpoint::Nats { subject } => write!(f, "nats:{subject}"),
        }
    }
}

#[derive(Debug)]
pub struct DynamoModel {
    pub name: String,
    /// What a language or embedding model is tokenized with; `None` for a tensor model.
    pub card: Option<Arc<ModelCard>>,
    /// A tensor model's KServe config (`model_input: Tensor`).
    pub tensor: Option<Arc<ModelConfig>>,
    /// The blake3 of the model record, so a changed card is a changed target.
    pub digest: blake3::Hash,
    pub token_budget: Option<TokenBudget>,
    /// For a LoRA adapter of the worker: the adapter's name, which seeds its blocks' names.
    pub lora: Option<String>,
    pub kv_block_size: u64,
    /// The OpenAI routes of a worker that takes requests as they came (`model_input: Text`): it
    /// is sent no tokens.
    pub text_input: Option<TextApis>,
    /// A prefill worker's bootstrap rendezvous (SGLang's kind): its decode worker fetches the
    /// blocks from there while the prefill runs, so both requests go out at once.
    pub bootstrap: Option<BootstrapEndpoint>,
}

/// A prefill worker's bootstrap rendezvous (its card's `runtime_config.disaggregated_endpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapEndpoint {
    pub host: String,
    pub port: u16,
}

/// The routes a text-input model serves, from its card's model type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextApis {
    pub chat: bool,
    pub completions: bool,
    pub embeddings: bool,
    pub classify: bool,
    pub rerank: bool,
}

impl TextApis {
    /// What a card's model-type flags (`Chat | Completions`, `Embedding`, ...) serve.
    pub fn from_flags<'a>(flags: impl Iterator<Item = &'a str>) -> TextApis {
        let mut apis = TextApis::default();
        for flag in flags {
            match flag {
                "Chat" => apis.chat = true,
                "Completions" => apis.completions = true,
                "Embedding" => apis.embeddings = true,
                "Classify" => apis.classify = true,
                "Rerank" => apis.rerank = true,
                _ => {}
            }
        }
        apis
    }

    pub fn serves(self, api: tritium_backend_api::llm::OpenAiApi) -> bool {
        use tritium_backend_api::llm::OpenAiApi;
        match api {
            OpenAiApi::Chat => self.chat,
            OpenAiApi::Completions => self.completions,
            OpenAiApi::Embeddings => self.embeddings,
            OpenAiApi::Classify => self.classify,
            OpenAiApi::Rerank => self.rerank,
        }
    }

    pub fn any(self) -> bool {
        self != TextApis::default()
    }
}

impl DynamoTarget {
    /// The tokens per KV block of its models (Dynamo workers have one cache).
    pub fn kv_block_size(&self) -> Option<usize> {
        self.models.iter().map(|m| m.kv_block_size).find(|&size| size > 0).and_then(|size| usize::try_from(size).ok())
    }
}

impl PartialEq for DynamoTarget {
    fn eq(&self, other: &DynamoTarget) -> bool {
        self.key == other.key
            && self.endpoint == other.endpoint
            && self.codec == other.codec
            && self.models.len() == other.models.len()
            && self.models.iter().zip(&other.models).all(|(a, b)| a.name == b.name && a.digest == b.digest)
    }
}

impl Eq for DynamoTarget {}

/// The token limit a vLLM, SGLang or TensorRT-LLM worker publishes: a request without
/// `max_tokens` gets what is left of it after the prompt; a prompt filling it, or (with
/// `reject_total_overflow`) a prompt and `max_tokens` over it, is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBudget {
    pub combined_limit: u64,
    pub reject_prompt_overflow: bool,
    pub reject_total_overflow: bool,
}
