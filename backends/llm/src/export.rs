//! The engine's side of a KV transfer (disaggregated prefill and decode): where a prefill sends a
//! prompt's blocks as they fill, and the block shape the offload tier checks. The transfer's
//! public types are the seam's (`tritium_backend_api::llm::{KvExport, ImportedBlocks, ..}`).

use tokio::sync::mpsc;
use tritium_backend_api::llm::{ExportedBlock, TransferLayout};

use crate::offload::BlockLayout;

/// Where an engine sends a prompt's blocks as they become full.
pub(crate) struct ExportSink {
    pub sender: mpsc::UnboundedSender<ExportedBlock>,
    /// The next block to send, and the end (exclusive).
    pub next: usize,
    pub until: usize,
}

/// The shape of one block's values under `layout` (what the offload tier checks too).
pub(crate) fn block_layout(layout: &TransferLayout) -> BlockLayout {
    BlockLayout { layers: layout.layers, kv_heads: layout.kv_heads, head_dim: layout.head_dim, block_size: layout.block_size }
}
