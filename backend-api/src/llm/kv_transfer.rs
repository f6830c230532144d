//! Moving a prompt's KV blocks from one engine to another: disaggregated prefill and decode.
//!
//! A prefill engine computes the full blocks of a prompt that a decode engine lacks and hands
//! them out one by one as they are written ([`KvExport`]); the decode engine takes them in at
//! admission ([`ImportedBlocks`]), commits them to its prefix cache like blocks it computed, and
//! computes only the rest: the block holding the prompt's last token (its logits are needed) and
//! whatever did not arrive. Blocks travel as f32 values in the offload tier's order (per layer,
//! keys then values, `[kv_heads, block_size, head_dim]` each), and are used only between engines
//! whose [`TransferLayout`]s agree.

use futures::StreamExt;
use tokio::sync::mpsc;

use super::types::{GenerateError, GenerateEvent, TokenStream};

/// What a block's data must match to be used by another engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLayout {
    pub model: String,
    pub block_size: u32,
    /// The element type of the engine's KV store (blocks travel as f32 whatever it is).
    pub dtype: String,
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
}

impl TransferLayout {
    /// f32 values in one block: keys and values of every layer.
    pub fn block_values(&self) -> usize {
        2 * self.layers as usize * self.kv_heads as usize * self.block_size as usize * self.head_dim as usize
    }

    /// Why blocks laid out as `theirs` cannot be used by an engine laid out as `self`, if so.
    pub fn mismatch(&self, theirs: &TransferLayout) -> Option<String> {
        let fields: [(&str, String, String); 6] = [
            ("model", self.model.clone(), theirs.model.clone()),
            ("block size", self.block_size.to_string(), theirs.block_size.to_string()),
            ("dtype", self.dtype.clone(), theirs.dtype.clone()),
            ("layers", self.layers.to_string(), theirs.layers.to_string()),
            ("KV heads", self.kv_heads.to_string(), theirs.kv_heads.to_string()),
            ("head size", self.head_dim.to_string(), theirs.head_dim.to_string()),
        ];
        let differ: Vec<String> = fields
            .into_iter()
            .filter(|(_, ours, theirs)| ours != theirs)
            .map(|(what, ours, theirs)| format!("{what} {theirs:?} where this engine has {ours:?}"))
            .collect();
        (!differ.is_empty()).then(|| differ.join(", "))
    }
}

/// One block of an export: its position in the prompt (0 is the first block) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedBlock {
    pub index: usize,
    pub data: Vec<f32>,
}

/// Blocks `first..first + blocks.len()` of a prompt, computed elsewhere, for a decode engine to
/// start from. Blocks it already holds are not overwritten; a gap makes it compute from there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportedBlocks {
    pub first: usize,
    pub blocks: Vec<Vec<f32>>,
}

impl ImportedBlocks {
    /// The blocks of `self` from index `next` on, within `limit` blocks of the prompt.
    pub fn usable_from(&self, next: usize, limit: usize) -> usize {
        if next < self.first {
            return 0;
        }
        (self.first + self.blocks.len()).min(limit).saturating_sub(next)
    }
}

/// A prompt's blocks being computed by an engine for another one. Dropping it cancels the work.
pub struct KvExport {
    layout: TransferLayout,
    first: usize,
    until: usize,
    blocks: mpsc::UnboundedReceiver<ExportedBlock>,
    /// The prefill sequence: it ends the export with an error if it fails.
    sequence: Option<TokenStream>,
}

impl std::fmt::Debug for KvExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvExport").field("first", &self.first).field("until", &self.until).finish_non_exhaustive()
    }
}

impl KvExport {
    /// An export of blocks `first..until`, arriving on `blocks` as `sequence` computes them.
    pub fn new(
        layout: TransferLayout,
        first: usize,
        until: usize,
        blocks: mpsc::UnboundedReceiver<ExportedBlock>,
        sequence: Option<TokenStream>,
    ) -> KvExport {
        KvExport { layout, first, until, blocks, sequence }
    }

    pub fn layout(&self) -> &TransferLayout {
        &self.layout
    }

    /// The blocks it will send: `first..until`.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.first..self.until
    }

    /// The next block in order, `None` after the last, or why the prefill stopped short.
    pub async fn next(&mut self) -> Option<Result<ExportedBlock, GenerateError>> {
        if let Some(block) = self.blocks.recv().await {
            self.first = block.index + 1;
            return Some(Ok(block));
        }
        if self.first >= self.until {
            return None;
        }
        let failed = match self.sequence.as_mut() {
            Some(sequence) => loop {
                match sequence.next().await {
                    Some(Err(error)) => break Some(error),
                    Some(Ok(GenerateEvent::Token(_) | GenerateEvent::PromptLogprobs(_))) => continue,
                    Some(Ok(GenerateEvent::Finished { .. })) | None => break None,
                }
            },
            None => None,
        };
        self.first = self.until;
        Some(Err(failed.unwrap_or_else(|| GenerateError::Engine {
            model: self.layout.model.clone(),
            message: "the prefill ended before its blocks were all sent".to_string(),
        })))
    }
}
