//! `--cache-config local,size=BYTES`: responses kept in this process, bounded by the bytes they
//! hold (see [`super::charged_bytes`]). Eviction is quick_cache's S3-FIFO, which keeps what is hit
//! again as an LRU does and lets one-off entries go first. One shard: an entry is kept when it
//! fits the bound, not a shard's share of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use tritium_tensor::Tensor;

use super::{CacheGauges, CacheKey, ResponseCache, charged_bytes};

/// Entries are charged what [`charged_bytes`] says, computed once when they are stored.
#[derive(Debug, Clone)]
struct Entry {
    outputs: Arc<[Tensor]>,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl Weighter<CacheKey, Entry> for ByBytes {
    fn weight(&self, _: &CacheKey, entry: &Entry) -> u64 {
        entry.bytes
    }
}

/// Counts what quick_cache evicts, for `nv_cache_num_evictions`.
#[derive(Debug, Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<CacheKey, Entry> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut Self::RequestState, _: CacheKey, _: Entry) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The byte-bounded store of one process.
pub struct LocalCache {
    entries: Cache<CacheKey, Entry, ByBytes, quick_cache::DefaultHashBuilder, Evictions>,
    evictions: Evictions,
    size: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache").field("size", &self.size).field("entries", &self.entries.len()).finish()
    }
}

impl LocalCache {
    /// A store that holds at most `size` bytes of responses.
    pub fn new(size: u64) -> LocalCache {
        // A guess of the entry count sizes the index; entries of a few KiB are typical.
        let estimated = usize::try_from((size / 4096).clamp(16, 1 << 20)).unwrap_or(16);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(size)
            .shards(1)
            .build()
            .unwrap_or_else(|_| unreachable!("capacity and shards are set"));
        let evictions = Evictions::default();
        LocalCache {
            entries: Cache::with_options(options, ByBytes, Default::default(), evictions.clone()),
            evictions,
            size,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Bytes held now.
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }
}

#[async_trait::async_trait]
impl ResponseCache for LocalCache {
    async fn lookup(&self, key: &CacheKey) -> Option<Arc<[Tensor]>> {
        let found = self.entries.get(key).map(|entry| entry.outputs);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    async fn insert(&self, key: &CacheKey, outputs: &[Tensor]) {
        let bytes = charged_bytes(outputs);
        // quick_cache would refuse it too; checking first spares evicting for nothing.
        if bytes > self.size {
            return;
        }
        // Owned copies: an output may be a slice of a larger buffer (a batch's output, the request
        // message an identity model echoes), which the entry would keep alive uncharged.
        let owned: Vec<Tensor> = outputs
            .iter()
            .map(|t| Tensor::new(t.name.clone(), t.datatype, t.shape.clone(), Bytes::copy_from_slice(&t.data)))
            .collect();
        self.entries.insert(*key, Entry { outputs: Arc::from(owned), bytes });
    }

    fn gauges(&self) -> Option<CacheGauges> {
        let utilization = if self.size == 0 { 0.0 } else { self.weight() as f64 / self.size as f64 };
        Some(CacheGauges {
            entries: self.len() as u64,
            utilization,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.0.load(Ordering::Relaxed),
        })
    }
}
