//! The mock engine: the real engine (its queue, admission, block pool and prefix cache,
//! preemption, chunked prefill, sampling, KV events and transfers) over a simulated model. A step
//! costs `decode_ms_per_step`, plus `prefill_us_per_token` for each prompt token it computes (the
//! tokens of sequences fed more than one at a time); what the prefix cache holds is not computed.
//!
//! The simulated model writes the bytes of a fixed English text: the token after position `p` is
//! the text's byte `p + 1` (cycled), so output is printable and repeatable. Its logits give that
//! byte 0 and the printable bytes after it -30, -31, ..., everything else -10000: sampling at any
//! temperature picks the text, and log-probabilities have an order to report. Its KV blocks hold
//! no values, so they cost no memory, and move between mock workers like real ones.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::card::{MOCK_VOCAB_SIZE, mock_card};
use super::options::{MockError, MockOptions};
use crate::block_pool::BlockId;
use crate::engine::LlmEngine;
use crate::engine_state::EngineOptions;
use crate::model::SequenceInput;
use crate::step_model::{ModelShape, OnRow, StepModel};
use tritium_backend_api::kv::KvEvent;
use tritium_backend_api::llm::{
    EngineStats, GenerateError, GenerateRequest, ImportedBlocks, KvExport, LanguageModel, ModelCard, TokenStream, TransferLayout,
};

/// What the mock model "writes", byte by byte.
const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt \
ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut \
aliquip ex ea commodo consequat. ";

/// Printable ASCII, where the runners-up in the logits are drawn from.
const PRINTABLE_FIRST: u32 = 0x20;
const PRINTABLE_COUNT: u32 = 95;
/// Runners-up given a logit of their own.
const RUNNERS_UP: u32 = 20;

/// The token the mock writes after `position`.
fn text_after(position: usize) -> u32 {
    u32::from(TEXT[(position + 1) % TEXT.len()])
}

/// The simulated model: a pause, and logits that pick the text.
struct SimulatedModel {
    prefill_us_per_token: u64,
    decode_ms_per_step: u64,
}

impl StepModel for SimulatedModel {
    fn forward(&mut self, inputs: &[SequenceInput<'_>]) -> Result<Vec<Vec<f32>>, String> {
        let prefilled: u64 = inputs.iter().map(|input| input.tokens.len() as u64).filter(|&n| n > 1).sum();
        let cost = Duration::from_millis(self.decode_ms_per_step)
            + Duration::from_micros(self.prefill_us_per_token.saturating_mul(prefilled));
        std::thread::sleep(cost);
        Ok(inputs.iter().map(|input| logits(text_after(input.cached + input.tokens.len() - 1))).collect())
    }

    fn forward_scoring(
        &mut self,
        inputs: &[SequenceInput<'_>],
        score: &[bool],
        on_row: OnRow<'_>,
    ) -> Result<Vec<Vec<f32>>, String> {
        for (index, input) in inputs.iter().enumerate().filter(|&(index, _)| score.get(index).copied().unwrap_or(false)) {
            for row in 0..input.tokens.len() {
                on_row(index, row, &logits(text_after(input.cached + row)));
            }
        }
        self.forward(inputs)
    }

    fn read_block(&self, _: BlockId) -> Result<Vec<f32>, String> {
        Ok(Vec::new())
    }

    fn write_block(&mut self, _: BlockId, data: &[f32]) -> Result<(), String> {
        match data.is_empty() {
            true => Ok(()),
            false => Err(format!("a mock KV block holds no values, not {}", data.len())),
        }
    }
}

fn logits(chosen: u32) -> Vec<f32> {
    let mut logits = vec![-10_000.0; MOCK_VOCAB_SIZE as usize];
    let start = chosen.saturating_sub(PRINTABLE_FIRST);
    for k in 1..RUNNERS_UP {
        logits[(PRINTABLE_FIRST + (start + k) % PRINTABLE_COUNT) as usize] = -30.0 - k as f32;
    }
    logits[chosen as usize] = 0.0;
    logits
}

/// A simulated language model on the real engine; dropping it stops the engine's thread.
pub struct MockEngine {
    engine: LlmEngine,
    options: MockOptions,
}

impl std::fmt::Debug for MockEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockEngine").field("engine", &self.engine).field("options", &self.options).finish()
    }
}

impl MockEngine {
    /// Starts an engine; needs no async runtime.
    ///
    /// # Panics
    /// When the options are invalid (see [`MockOptions::validate`]) or the thread cannot start;
    /// [`try_new`](Self::try_new) returns those as errors.
    pub fn new(name: &str, options: MockOptions) -> Arc<MockEngine> {
        MockEngine::try_new(name, options).unwrap_or_else(|e| panic!("mock engine '{name}': {e}"))
    }

    pub fn try_new(name: &str, options: MockOptions) -> Result<Arc<MockEngine>, MockError> {
        options.validate()?;
        let engine_options = EngineOptions {
            max_sequences: options.max_sequences,
            max_kv_tokens: options.kv_blocks.saturating_mul(options.block_size),
            kv_block_size: options.block_size,
            max_queue: options.max_queue,
            offload: None,
            scheduling_policy: options.scheduling_policy,
            ..EngineOptions::default()
        };
        let shape = ModelShape {
            vocab_size: MOCK_VOCAB_SIZE as usize,
            layers: 0,
            kv_heads: 0,
            head_dim: 0,
            kv_dtype: "none".to_string(),
            kv_bytes_per_token: 0,
        };
        let model =
            SimulatedModel { prefill_us_per_token: options.prefill_us_per_token, decode_ms_per_step: options.decode_ms_per_step };
        let card = mock_card(options.context_length);
        let engine = LlmEngine::start_with(name, shape, card, engine_options, move |_, _| {
            Ok((Box::new(model) as Box<dyn StepModel>, None))
        })
        .map_err(MockError::Start)?;
        Ok(Arc::new(MockEngine { engine, options }))
    }

    pub fn options(&self) -> &MockOptions {
        &self.options
    }
}

impl LanguageModel for MockEngine {
    fn card(&self) -> &Arc<ModelCard> {
        self.engine.card()
    }

    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        refuse_constraints(&request)?;
        self.engine.generate(request)
    }

    fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    fn kv_events(&self) -> Option<broadcast::Receiver<KvEvent>> {
        self.engine.kv_events()
    }

    fn kv_layout(&self) -> Option<TransferLayout> {
        self.engine.kv_layout()
    }

    fn export_prefix(&self, prompt: Vec<u32>, first_block: usize) -> Result<KvExport, GenerateError> {
        self.engine.export_prefix(prompt, first_block)
    }

    fn generate_with_prefix(&self, request: GenerateRequest, prefix: ImportedBlocks) -> Result<TokenStream, GenerateError> {
        refuse_constraints(&request)?;
        self.engine.generate_with_prefix(request, prefix)
    }
}

/// Its tokens are simulated: no grammar could hold them.
fn refuse_constraints(request: &GenerateRequest) -> Result<(), GenerateError> {
    match request.constraint {
        Some(_) => Err(GenerateError::InvalidRequest("the mock engine does not support structured output".to_string())),
        None => Ok(()),
    }
}
