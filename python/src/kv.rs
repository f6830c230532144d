//! KV events from Python language models: a handler bound with `Worker.bind_llm` announces the KV
//! blocks its engine stores and evicts through a [`KvPublisher`] (`request.kv`, also what
//! `bind_llm` returns), as Dynamo's Python workers publish `KvCacheEvent`s. The events go out
//! exactly as a Rust engine's do: the worker forwards its models' `kv_events()` to the event
//! plane (NATS), where a frontend's KV-aware router indexes them. Blocks are named by the
//! router's own chained hash of their tokens (`tritium_backend_api::kv`), so the handler gives
//! token ids and gets the hashes back to announce their removal later.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokio::sync::broadcast;
use tritium_backend_api::kv::{BlockHash, KvEvent, chain_hash};

/// Events the worker's forwarder may fall behind by before it tells routers to start over
/// (`Cleared`).
const EVENT_CAPACITY: usize = 1024;
/// The largest block size a model may name: a block is a prefix-matching unit, not a sequence.
pub const MAX_KV_BLOCK_SIZE: usize = 65_536;
/// Blocks one event carries at most: a long sequence's blocks go out as several chained events,
/// each well under NATS's default 1 MiB message limit.
const MAX_BLOCKS_PER_EVENT: usize = 4096;

/// One model's KV announcements: the engine hands out receivers, publishers send.
#[derive(Clone)]
pub struct KvChannel {
    sender: broadcast::Sender<KvEvent>,
    block_size: usize,
}

impl KvChannel {
    pub fn new(block_size: usize) -> Result<KvChannel, String> {
        if !(1..=MAX_KV_BLOCK_SIZE).contains(&block_size) {
            return Err(format!("kv_block_size must be between 1 and {MAX_KV_BLOCK_SIZE}, not {block_size}"));
        }
        Ok(KvChannel { sender: broadcast::channel(EVENT_CAPACITY).0, block_size })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<KvEvent> {
        self.sender.subscribe()
    }

    fn send(&self, event: KvEvent) {
        // Nobody listening (no event plane, or the worker not started yet) is normal.
        let _ = self.sender.send(event);
    }

    pub fn publisher(&self) -> KvPublisher {
        KvPublisher { channel: self.clone() }
    }
}

/// The hashes of the full blocks of `tokens`, chained from `parent` (0: the start of a sequence).
fn chained(tokens: &[u32], block_size: usize, parent: BlockHash) -> Vec<BlockHash> {
    let mut previous = parent;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            previous = chain_hash(previous, block);
            previous
        })
        .collect()
}

/// Announces a language model's KV-cache blocks to the frontends' KV-aware routers.
#[pyclass(module = "tritium._tritium", name = "KvPublisher", frozen)]
pub struct KvPublisher {
    channel: KvChannel,
}

#[pymethods]
impl KvPublisher {
    /// Announces that the full blocks of `token_ids` are now held (a trailing partial block is
    /// not), following the block hashed `parent` (None: the sequence's start). Returns their
    /// hashes, in order: give them to `removed` when the blocks are evicted, or the last one as
    /// `parent` of the sequence's next blocks.
    #[pyo3(signature = (token_ids, parent=None))]
    fn stored(&self, token_ids: Vec<u32>, parent: Option<BlockHash>) -> Vec<BlockHash> {
        let hashes = chained(&token_ids, self.channel.block_size, parent.unwrap_or(0));
        let mut before = parent;
        for chunk in hashes.chunks(MAX_BLOCKS_PER_EVENT) {
            self.channel.send(KvEvent::Stored { parent: before, blocks: chunk.to_vec() });
            before = chunk.last().copied();
        }
        hashes
    }

    /// Announces that the blocks with these hashes are no longer held.
    fn removed(&self, block_hashes: Vec<BlockHash>) {
        for chunk in block_hashes.chunks(MAX_BLOCKS_PER_EVENT) {
            self.channel.send(KvEvent::Removed { blocks: chunk.to_vec() });
        }
    }

    /// Announces that every block is gone (the cache was cleared).
    fn cleared(&self) {
        self.channel.send(KvEvent::Cleared);
    }

    /// Tokens per block: the frontends' `--kv-block-size` must be the same.
    #[getter]
    fn block_size(&self) -> usize {
        self.channel.block_size
    }

    fn __repr__(&self) -> String {
        format!("KvPublisher(block_size={})", self.channel.block_size)
    }
}

/// The hashes the router gives the full blocks of `token_ids`, chained from `parent`.
#[pyfunction]
#[pyo3(signature = (token_ids, block_size, parent=None))]
pub fn kv_block_hashes(token_ids: Vec<u32>, block_size: usize, parent: Option<BlockHash>) -> PyResult<Vec<BlockHash>> {
    if !(1..=MAX_KV_BLOCK_SIZE).contains(&block_size) {
        return Err(PyValueError::new_err(format!("block_size must be between 1 and {MAX_KV_BLOCK_SIZE}, not {block_size}")));
    }
    Ok(chained(&token_ids, block_size, parent.unwrap_or(0)))
}
