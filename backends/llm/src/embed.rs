//! Sentence embeddings with a BERT encoder (all-MiniLM-L6-v2 and its kin): token ids in, one
//! unit-length vector per input out, by attention-masked mean pooling as sentence-transformers
//! does it.
//!
//! [`BertEmbedder`] is the [`EmbeddingModel`] the OpenAI bridge's `/v1/embeddings` drives;
//! [`embed_factory`] puts it in the model repository under the backend name `tritium_embed`:
//!
//! ```text
//! backend: "tritium_embed"
//! parameters { key: "model_path" value { string_value: "minilm" } }  # relative to the model folder
//! ```

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tritium_proto::inference::ModelConfig;

use tritium_backend_api::llm::{EmbeddingModel, GenerateError, ModelCard, ModelKind};
use tritium_backend_api::{BackendContext, BackendFactory, Engine};

/// Inputs run through the encoder this many at a time, to bound the activations' memory.
const CHUNK: usize = 32;

/// A BERT sentence embedder on the CPU.
pub struct BertEmbedder {
    name: String,
    card: Arc<ModelCard>,
    model: Arc<BertModel>,
    vocab_size: usize,
    pad_token_id: u32,
    /// The longest input accepted: the card's limit, never past the position embeddings.
    max_input_tokens: usize,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("name", &self.name)
            .field("source", &self.card.source)
            .field("max_input_tokens", &self.max_input_tokens)
            .finish_non_exhaustive()
    }
}

/// Loads a Hugging Face BERT folder: `config.json`, `model.safetensors` and the tokenizer files
/// the card needs. Tensor names may carry a `bert.` prefix or not.
pub fn load(dir: &Path) -> Result<BertEmbedder, String> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let config: Config =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a BERT config: {e}", config_path.display()))?;
    let weights = dir.join("model.safetensors");
    // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody truncating
    // or rewriting the model file while it is served.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }
        .map_err(|e| format!("cannot open {}: {e}", weights.display()))?;
    // BertModel::load only finds a `bert.` prefix through `config.model_type`; look for it here.
    let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
    let model = BertModel::load(vb, &config).map_err(|e| format!("cannot load BERT from {}: {e}", dir.display()))?;
    let card = crate::card::card_from_hf_dir(dir, ModelKind::Embed)?;
    let max_input_tokens =
        card.max_input_tokens.map_or(config.max_position_embeddings, |limit| limit.min(config.max_position_embeddings));
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(BertEmbedder {
        name,
        card: Arc::new(card),
        model: Arc::new(model),
        vocab_size: config.vocab_size,
        pad_token_id: u32::try_from(config.pad_token_id).map_err(|_| "pad_token_id does not fit u32".to_string())?,
        max_input_tokens,
    })
}

impl BertEmbedder {
    /// Names the model in error messages (the folder name until then).
    pub fn with_name(mut self, name: impl Into<String>) -> BertEmbedder {
        self.name = name.into();
        self
    }

    /// The longest input, in tokens, that [`EmbeddingModel::embed`] accepts.
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    fn validate(&self, inputs: &[Vec<u32>]) -> Result<(), GenerateError> {
        if inputs.is_empty() {
            return Err(GenerateError::InvalidRequest("the input list is empty".to_string()));
        }
        for (i, input) in inputs.iter().enumerate() {
            if input.is_empty() {
                return Err(GenerateError::InvalidRequest(format!("input {i} is empty")));
            }
            if input.len() > self.max_input_tokens {
                return Err(GenerateError::InvalidRequest(format!(
                    "input {i} has {} tokens, more than the model's limit of {}",
                    input.len(),
                    self.max_input_tokens
                )));
            }
            if let Some(&id) = input.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(GenerateError::InvalidRequest(format!(
                    "input {i} has token id {id}, outside the vocabulary of {} tokens",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EmbeddingModel for BertEmbedder {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError> {
        self.validate(&inputs)?;
        let model = Arc::clone(&self.model);
        let pad = self.pad_token_id;
        let engine_error = |message: String| GenerateError::Engine { model: self.name.clone(), message };
        tokio::task::spawn_blocking(move || embed_all(&model, &inputs, pad))
            .await
            .map_err(|e| engine_error(format!("the embedding task stopped: {e}")))?
            .map_err(|e| engine_error(e.to_string()))
    }
}

/// Embeds every input, in chunks of similar lengths so little of each batch is padding.
fn embed_all(model: &BertModel, inputs: &[Vec<u32>], pad: u32) -> candle_core::Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let mut vectors = vec![Vec::new(); inputs.len()];
    for chunk in order.chunks(CHUNK) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| inputs[i].as_slice()).collect();
        for (&i, vector) in chunk.iter().zip(embed_batch(model, &batch, pad)?) {
            vectors[i] = vector;
        }
    }
    Ok(vectors)
}

/// One forward pass over a padded batch, then masked mean pooling and L2 normalisation.
fn embed_batch(model: &BertModel, batch: &[&[u32]], pad: u32) -> candle_core::Result<Vec<Vec<f32>>> {
    let rows = batch.len();
    let longest = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad; rows * longest];
    let mut mask = vec![0u32; rows * longest];
    for (row, input) in batch.iter().enumerate() {
        ids[row * longest..row * longest + input.len()].copy_from_slice(input);
        mask[row * longest..row * longest + input.len()].fill(1);
    }
    let device = &model.device;
    let ids = Tensor::from_vec(ids, (rows, longest), device)?;
    let mask = Tensor::from_vec(mask, (rows, longest), device)?;
    let token_types = ids.zeros_like()?;
    let hidden = model.forward(&ids, &token_types, Some(&mask))?;
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?;
    let means = summed.broadcast_div(&counts)?.to_vec2::<f32>()?;
    Ok(means.into_iter().map(normalised).collect())
}

/// Scales to unit length; sentence-transformers' `Normalize` (F.normalize, eps 1e-12).
fn normalised(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

/// The backend name a `config.pbtxt` gives for an embedding model.
pub const EMBED_BACKEND: &str = "tritium_embed";

/// The `tritium_embed` backend: loads the BERT folder named by the config parameter
/// `model_path` (relative to the model folder when it is relative).
pub fn embed_factory() -> impl BackendFactory {
    EmbedFactory
}

struct EmbedFactory;

impl BackendFactory for EmbedFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let path = context
            .parameter("model_path")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("the model '{}' needs the parameter 'model_path' (a BERT folder)", context.model_name))?;
        let dir = tritium_backend_api::model_files::resolve_model_file(context.model_dir, path)
            .map_err(|why| format!("model_path {why}"))?;
        tritium_backend_api::warn_unread_parameters(context.model_name, "embedding", context.config, &["model_path"]);
        let embedder = load(&dir)?.with_name(context.model_name);
        Ok(Engine::Embedding(Arc::new(embedder)))
    }

    fn complete_config(&self, config: &mut ModelConfig, _model_dir: Option<&Path>) -> Result<(), String> {
        // Embedding requests batch inside `embed`; the KServe scheduler has nothing to batch.
        config.max_batch_size = 0;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use tokenizers::Tokenizer;
    use tritium_proto::inference::ModelParameter;

    use super::*;
    use tritium_backend_api::no_host;

    const MODEL: &str = crate::test_models::MINILM_DIR;

    /// The models folder, with MiniLM in it.
    fn models_dir() -> PathBuf {
        crate::test_models::installed_model(MODEL);
        crate::test_models::models_dir()
    }

    fn minilm() -> (BertEmbedder, Tokenizer) {
        let dir = models_dir().join(MODEL);
        let embedder = load(&dir).unwrap();
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None).with_truncation(None).unwrap();
        (embedder, tokenizer)
    }

    fn tokenize(tokenizer: &Tokenizer, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.iter().map(|t| tokenizer.encode(*t, true).unwrap().get_ids().to_vec()).collect()
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[tokio::test]
    async fn minilm_matches_the_published_similarity() {
        let (embedder, tokenizer) = minilm();
        let inputs = tokenize(
            &tokenizer,
            &[
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "The new movie is awesome.",
                "Quarterly tax returns are due in April.",
            ],
        );
        let started = Instant::now();
        let vectors = embedder.embed(inputs).await.unwrap();
        eprintln!("embedded 4 sentences in {:?}", started.elapsed());
        assert_eq!(vectors.len(), 4);
        for v in &vectors {
            assert_eq!(v.len(), 384);
            assert!((cos(v, v) - 1.0).abs() < 1e-5, "norm² {}", cos(v, v));
        }
        let golden = cos(&vectors[0], &vectors[1]);
        eprintln!(
            "cos = {golden}, unrelated: {} {} {}",
            cos(&vectors[0], &vectors[2]),
            cos(&vectors[0], &vectors[3]),
            cos(&vectors[2], &vectors[3])
        );
        assert!((golden - 0.7553).abs() < 0.001, "cos = {golden}");
        for (a, b) in [(0, 2), (0, 3), (2, 3)] {
            let unrelated = cos(&vectors[a], &vectors[b]);
            assert!(unrelated < 0.3, "cos({a}, {b}) = {unrelated}");
        }
    }

    #[tokio::test]
    async fn padding_and_chunking_do_not_change_the_vectors() {
        let (embedder, tokenizer) = minilm();
        let texts = [
            "Hi.",
            "A man is eating a piece of bread.",
            "The quick brown fox jumps over the lazy dog, then naps under the old oak tree all afternoon.",
            "Embeddings.",
            "Sentence embeddings map text to vectors so that similar meanings land close together.",
        ];
        let distinct = tokenize(&tokenizer, &texts);
        let mut singles = Vec::new();
        for input in &distinct {
            singles.push(embedder.embed(vec![input.clone()]).await.unwrap().remove(0));
        }
        // More inputs than one chunk, in an order that sorting by length must undo.
        let batch: Vec<Vec<u32>> = (0..CHUNK + 8).map(|i| distinct[(i * 3) % distinct.len()].clone()).collect();
        let started = Instant::now();
        let vectors = embedder.embed(batch).await.unwrap();
        eprintln!("embedded {} inputs in {:?}", CHUNK + 8, started.elapsed());
        for (i, vector) in vectors.iter().enumerate() {
            let single = &singles[(i * 3) % distinct.len()];
            let diff = vector.iter().zip(single).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "input {i} differs by {diff}");
        }
    }

    #[tokio::test]
    async fn bad_inputs_are_invalid_requests() {
        let (embedder, _) = minilm();
        let limit = embedder.max_input_tokens();
        let message = |inputs: Vec<Vec<u32>>| {
            let embedder = &embedder;
            async move {
                match embedder.embed(inputs).await {
                    Err(GenerateError::InvalidRequest(message)) => message,
                    other => panic!("expected InvalidRequest, got {other:?}"),
                }
            }
        };
        assert_eq!(message(vec![]).await, "the input list is empty");
        assert_eq!(message(vec![vec![101, 102], vec![]]).await, "input 1 is empty");
        assert_eq!(
            message(vec![vec![101; 3], vec![101; limit + 1]]).await,
            format!("input 1 has {} tokens, more than the model's limit of {limit}", limit + 1)
        );
        assert_eq!(
            message(vec![vec![101, 99_999, 102]]).await,
            "input 0 has token id 99999, outside the vocabulary of 30522 tokens"
        );
        assert_eq!(embedder.embed(vec![vec![101; limit]]).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_backend_builds_an_embedding_engine() {
        let models = models_dir();
        let mut config = ModelConfig { name: "minilm".into(), max_batch_size: 8, ..ModelConfig::default() };
        config.parameters.insert("model_path".into(), ModelParameter { string_value: MODEL.into() });
        let factory = embed_factory();
        factory.complete_config(&mut config, Some(&models)).unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert!(config.input.is_empty() && config.output.is_empty());
        let context = BackendContext {
            model_name: "minilm",
            version: 1,
            config: &config,
            version_dir: None,
            model_dir: Some(&models),
            host: no_host(),
        };
        let engine = factory.create(&context).unwrap();
        let embedder = engine.embedding_model().unwrap();
        assert_eq!(embedder.card().kind, ModelKind::Embed);
        assert!(engine.language_model().is_none());

        config.parameters.clear();
        let context = BackendContext {
            model_name: "minilm",
            version: 1,
            config: &config,
            version_dir: None,
            model_dir: Some(&models),
            host: no_host(),
        };
        let missing = factory.create(&context).err().unwrap();
        assert_eq!(missing, "the model 'minilm' needs the parameter 'model_path' (a BERT folder)");
    }
}
