//! Both ends of a KV transfer on the worker plane (disaggregated prefill and decode).
//!
//! The frontend sends a decode worker the prompt with the prefill worker it chose. The decode
//! worker calls that worker's `Prefill`, which streams its layout and then each block as its
//! engine writes it, and hands what arrived to its own engine, which computes the rest. The
//! blocks go from prefill worker to decode worker directly, never through the frontend.
//!
//! Nothing a prefill worker sends is trusted: its layout must be this engine's (model, block
//! size, dtype, layers, heads, head size), blocks must come in order, each exactly one block
//! long, no more than the prompt has, within the transfer timeout. The first thing that does not
//! check out ends the transfer with a warning, and the decode worker computes from there: the
//! client sees no error, only a slower first token. Memory is bounded by the prompt's blocks.

use std::collections::HashMap;
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tritium_backend_api::llm::{ImportedBlocks, KvExport, TransferLayout};
use tritium_proto::worker::{self as pb, KvTransfer, kv_transfer};

use super::RemoteWorker;
use super::convert::{layout_from_proto, layout_to_proto};

/// How a worker takes part in disaggregated serving, and its bounds.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Prefills for other workers running at once; more are refused (the caller computes).
    pub max_prefills: usize,
    /// How long a decode worker waits for a whole transfer before computing the rest itself.
    pub timeout: Duration,
    /// The worker-plane token this worker sends to prefill workers.
    pub token: Option<String>,
    pub max_message_size: usize,
    /// How prefill workers are reached (their addresses may be on the NATS request plane).
    pub dialer: super::Dialer,
}

impl Default for TransferOptions {
    fn default() -> TransferOptions {
        TransferOptions {
            max_prefills: 8,
            timeout: Duration::from_secs(30),
            token: None,
            max_message_size: 64 << 20,
            dialer: super::Dialer::default(),
        }
    }
}

/// Prefill workers this decode worker has called, by URI: more are not remembered.
const MAX_PEERS: usize = 64;

/// Both ends' state: the prefill slots this worker lends, and its clients of prefill workers.
#[derive(Debug)]
pub(crate) struct KvTransfers {
    options: TransferOptions,
    slots: Arc<Semaphore>,
    peers: Mutex<HashMap<String, RemoteWorker>>,
}

/// What a decode worker got from a prefill worker.
pub(crate) struct Pulled {
    pub blocks: ImportedBlocks,
    /// The prefill worker, when it sent at least one block.
    pub from: Option<String>,
}

impl KvTransfers {
    pub(crate) fn new(options: TransferOptions) -> KvTransfers {
        let slots = Arc::new(Semaphore::new(options.max_prefills));
        KvTransfers { options, slots, peers: Mutex::new(HashMap::new()) }
    }

    /// A prefill slot, or `None` when all are taken.
    pub(crate) fn prefill_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    pub(crate) fn max_prefills(&self) -> usize {
        self.options.max_prefills
    }

    fn peer(&self, source: &pb::PrefillSource) -> Result<RemoteWorker, String> {
        let mut peers = self.peers.lock();
        if let Some(peer) = peers.get(&source.uri) {
            return Ok(peer.clone());
        }
        let peer = RemoteWorker::dial(
            &source.worker_id,
            &source.uri,
            self.options.max_message_size,
            self.options.token.as_deref(),
            &self.options.dialer,
        )
        .map_err(|e| e.to_string())?;
        if peers.len() >= MAX_PEERS {
            peers.clear();
        }
        peers.insert(source.uri.clone(), peer.clone());
        Ok(peer)
    }

    /// The blocks of `prompt` from `source.first_block` on, as far as they arrive and check out.
    pub(crate) async fn pull(
        &self,
        source: &pb::PrefillSource,
        version: Option<i64>,
        prompt: &[u32],
        layout: &TransferLayout,
    ) -> Pulled {
        let first = source.first_block as usize;
        let mut blocks = Vec::new();
        let started = std::time::Instant::now();
        let outcome =
            tokio::time::timeout(self.options.timeout, self.receive(source, version, prompt, layout, &mut blocks)).await;
        tracing::debug!(prefill_worker = %source.worker_id, blocks = blocks.len(), elapsed = ?started.elapsed(), "KV transfer received");
        let problem = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(problem)) => Some(problem),
            Err(_) => Some(format!("it took longer than {:?}", self.options.timeout)),
        };
        if let Some(problem) = problem {
            tracing::warn!(
                prefill_worker = %source.worker_id,
                model = %layout.model,
                received = blocks.len(),
                "KV transfer stopped ({problem}); computing the rest of the prompt here"
            );
        }
        let from = (!blocks.is_empty()).then(|| source.worker_id.clone());
        Pulled { blocks: ImportedBlocks { first, blocks }, from }
    }

    async fn receive(
        &self,
        source: &pb::PrefillSource,
        version: Option<i64>,
        prompt: &[u32],
        layout: &TransferLayout,
        blocks: &mut Vec<Vec<f32>>,
    ) -> Result<(), String> {
        let first = source.first_block as usize;
        let block_size = (layout.block_size as usize).max(1);
        let expected = (prompt.len().saturating_sub(1) / block_size).saturating_sub(first);
        if expected == 0 {
            return Ok(());
        }
        let request = pb::PrefillRequest {
            model: layout.model.clone(),
            version,
            prompt: prompt.to_vec(),
            first_block: source.first_block,
            layout: Some(layout_to_proto(layout)),
        };
        let (mut stream, _hop) = self.peer(source)?.prefill(request).await.map_err(|e| e.to_string())?;
        let values = layout.block_values();
        let mut layout_checked = false;
        while let Some(message) = stream.message().await.map_err(|status| status.message().to_string())? {
            match message.part {
                Some(kv_transfer::Part::Layout(theirs)) if !layout_checked => {
                    if let Some(mismatch) = layout.mismatch(&layout_from_proto(theirs)) {
                        return Err(format!("its blocks do not fit this worker's: {mismatch}"));
                    }
                    layout_checked = true;
                }
                Some(kv_transfer::Part::Block(block)) if layout_checked => {
                    let index = first + blocks.len();
                    if blocks.len() == expected {
                        return Err(format!("it sent more than the {expected} blocks asked for"));
                    }
                    if block.index as usize != index {
                        return Err(format!("block {} came where block {index} was due", block.index));
                    }
                    if block.data.len() != values * 4 {
                        return Err(format!("block {index} has {} bytes, where {} were due", block.data.len(), values * 4));
                    }
                    blocks.push(block.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
                }
                _ => return Err("it did not send its layout first, once".to_string()),
            }
        }
        match blocks.len() == expected {
            true => Ok(()),
            false => Err(format!("it ended after {} of {expected} blocks", blocks.len())),
        }
    }
}

/// A prefill worker's answer: its layout, then each block as the engine writes it, as wire
/// messages. Holds the prefill slot until the last block is sent or the caller goes away.
pub(crate) fn transfer_stream(
    export: KvExport,
    slot: OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<KvTransfer, tritium_backend_api::llm::GenerateError>> + Send {
    let header = KvTransfer { part: Some(kv_transfer::Part::Layout(layout_to_proto(export.layout()))) };
    let blocks = futures::stream::unfold(Some((export, slot)), |state| async move {
        let (mut export, slot) = state?;
        match export.next().await? {
            Ok(block) => {
                let data: Vec<u8> = block.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                let index = u32::try_from(block.index).unwrap_or(u32::MAX);
                let message = KvTransfer { part: Some(kv_transfer::Part::Block(pb::KvBlock { index, data: data.into() })) };
                Some((Ok(message), Some((export, slot))))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    futures::stream::once(std::future::ready(Ok(header))).chain(blocks)
}
