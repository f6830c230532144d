//! The KV cache's second tier on local disk (Dynamo's KVBM idea, for a CPU box): a committed block
//! the pool evicts is written to a file instead of being lost, within a byte budget of its own
//! (least recently used files go first), and a later prompt that starts with it reads it back
//! instead of computing it again.
//!
//! Files are written by a thread of their own (the engine only copies the block out and queues
//! it; a full queue drops the spill), read on the engine thread when a sequence starts, and
//! never trusted: each carries the store's layout, the block's hashes and a CRC-32 of everything,
//! and one that does not check out is deleted and its block computed. The folder is emptied at
//! start-up (its files belong to an earlier process, whose hashes meant nothing to this one). A
//! block is identified by its chained hash (what the router sees) and by a keyed 128-bit hash of
//! its whole prefix, which nobody outside this process can forge.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::broadcast;

use tritium_backend_api::kv::{BlockHash, KvEvent};

/// Where and how much the offload tier keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadOptions {
    /// A folder of its own: every `*.kvb` file in the model's subfolder is deleted at start-up.
    pub dir: PathBuf,
    /// Bytes of block files kept at most.
    pub max_bytes: u64,
}

/// The shape of one block's payload, written in every file and checked on every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockLayout {
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub block_size: u32,
}

impl BlockLayout {
    /// f32 values in one block: keys and values of every layer.
    pub(crate) fn floats(&self) -> usize {
        2 * self.layers as usize * self.kv_heads as usize * self.block_size as usize * self.head_dim as usize
    }

    fn file_bytes(&self) -> usize {
        HEADER_BYTES + self.floats() * 4 + 4
    }
}

const MAGIC: &[u8; 4] = b"TKVB";
const VERSION: u32 = 1;
/// magic, version, four layout words, chained hash, strong hash, payload length.
const HEADER_BYTES: usize = 4 + 4 + 16 + 8 + 16 + 8;
/// Spills queued for the writer before new ones are dropped.
const QUEUE: usize = 64;

enum Job {
    Write { path: PathBuf, bytes: Vec<u8>, written: Arc<AtomicBool> },
    Delete { path: PathBuf },
}

struct Entry {
    strong: u128,
    stamp: u64,
    written: Arc<AtomicBool>,
}

/// What the tier did, for the engine's counters.
#[derive(Debug, Default)]
pub(crate) struct OffloadCounters {
    /// Blocks queued for their files, and those whose file is written.
    pub spilled: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub restored: AtomicU64,
    pub rejected: AtomicU64,
}

/// The files, their index and the writer thread.
pub(crate) struct OffloadTier {
    dir: PathBuf,
    max_bytes: u64,
    layout: BlockLayout,
    entries: HashMap<BlockHash, Entry>,
    lru: BTreeMap<u64, BlockHash>,
    clock: u64,
    jobs: Option<mpsc::SyncSender<Job>>,
    writer: Option<JoinHandle<()>>,
    events: broadcast::Sender<KvEvent>,
    pub counters: Arc<OffloadCounters>,
}

impl OffloadTier {
    /// Opens (and empties) `options.dir/<model>`; events go out on `events`.
    pub(crate) fn open(
        options: &OffloadOptions,
        model: &str,
        layout: BlockLayout,
        events: broadcast::Sender<KvEvent>,
    ) -> Result<OffloadTier, String> {
        let dir = options.dir.join(folder_name(model));
        std::fs::create_dir_all(&dir).map_err(|e| format!("the KV offload folder {}: {e}", dir.display()))?;
        clean(&dir)?;
        if (options.max_bytes as usize) < layout.file_bytes() {
            return Err(format!("--llm-kv-offload-bytes {} holds no block of {} bytes", options.max_bytes, layout.file_bytes()));
        }
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let counters = Arc::new(OffloadCounters::default());
        let writer_counters = Arc::clone(&counters);
        let writer = std::thread::Builder::new()
            .name(format!("kv-offload-{model}"))
            .spawn(move || write_files(queue, &writer_counters))
            .map_err(|e| format!("starting the KV offload writer: {e}"))?;
        Ok(OffloadTier {
            dir,
            max_bytes: options.max_bytes,
            layout,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            jobs: Some(jobs),
            writer: Some(writer),
            events,
            counters,
        })
    }

    fn path(&self, hash: BlockHash) -> PathBuf {
        self.dir.join(format!("{hash:016x}.kvb"))
    }

    fn used_bytes(&self) -> u64 {
        self.entries.len() as u64 * self.layout.file_bytes() as u64
    }

    pub(crate) fn contains(&self, hash: BlockHash) -> bool {
        self.entries.contains_key(&hash)
    }

    /// How many of `hashes` (with their `strongs`), from the first on, are here and written.
    pub(crate) fn matching(&self, hashes: &[BlockHash], strongs: &[u128]) -> usize {
        hashes
            .iter()
            .zip(strongs)
            .take_while(|(hash, strong)| {
                self.entries.get(hash).is_some_and(|e| e.strong == **strong && e.written.load(Ordering::Acquire))
            })
            .count()
    }

    /// Queues a block's keys and values (`payload`, the store's layout) for its file.
    pub(crate) fn spill(&mut self, hash: BlockHash, strong: u128, payload: &[f32]) {
        if self.contains(hash) || payload.len() != self.layout.floats() {
            return;
        }
        let size = self.layout.file_bytes() as u64;
        let mut dropped = Vec::new();
        while self.used_bytes() + size > self.max_bytes {
            let Some((_, oldest)) = self.lru.pop_first() else { break };
            self.entries.remove(&oldest);
            self.send(Job::Delete { path: self.path(oldest) });
            dropped.push(oldest);
        }
        if !dropped.is_empty() {
            let _ = self.events.send(KvEvent::OffloadRemoved { blocks: dropped });
        }
        let written = Arc::new(AtomicBool::new(false));
        let bytes = encode(self.layout, hash, strong, payload);
        let job = Job::Write { path: self.path(hash), bytes, written: Arc::clone(&written) };
        if !self.send(job) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.clock += 1;
        self.lru.insert(self.clock, hash);
        self.entries.insert(hash, Entry { strong, stamp: self.clock, written });
        self.counters.spilled.fetch_add(1, Ordering::Relaxed);
        let _ = self.events.send(KvEvent::Offloaded { blocks: vec![hash] });
    }

    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.try_send(job).is_ok())
    }

    /// The payload of block `hash`, read back and checked; `None` (and the file gone) when it
    /// does not check out.
    pub(crate) fn read(&mut self, hash: BlockHash, strong: u128) -> Option<Vec<f32>> {
        let entry = self.entries.get(&hash)?;
        if entry.strong != strong || !entry.written.load(Ordering::Acquire) {
            return None;
        }
        let stamp = entry.stamp;
        let path = self.path(hash);
        match read_checked(&path, self.layout, hash, strong) {
            Ok(payload) => {
                self.lru.remove(&stamp);
                self.clock += 1;
                self.lru.insert(self.clock, hash);
                if let Some(entry) = self.entries.get_mut(&hash) {
                    entry.stamp = self.clock;
                }
                self.counters.restored.fetch_add(1, Ordering::Relaxed);
                Some(payload)
            }
            Err(why) => {
                tracing::warn!(file = %path.display(), "an offloaded KV block was refused ({why}); it is computed instead");
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                self.lru.remove(&stamp);
                self.entries.remove(&hash);
                self.send(Job::Delete { path });
                let _ = self.events.send(KvEvent::OffloadRemoved { blocks: vec![hash] });
                None
            }
        }
    }
}

impl Drop for OffloadTier {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The model's subfolder: a hash of its name, so no name can reach outside the folder.
fn folder_name(model: &str) -> String {
    format!("model-{:016x}", tritium_backend_api::kv::chain_hash(0, &model.bytes().map(u32::from).collect::<Vec<_>>()))
}

/// Deletes the block files an earlier process left.
fn clean(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading the KV offload folder {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "kvb") {
            std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn write_files(queue: mpsc::Receiver<Job>, counters: &OffloadCounters) {
    for job in queue {
        match job {
            Job::Write { path, bytes, written } => match std::fs::write(&path, &bytes) {
                Ok(()) => {
                    written.store(true, Ordering::Release);
                    counters.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(file = %path.display(), "writing an offloaded KV block: {e}"),
            },
            Job::Delete { path } => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn encode(layout: BlockLayout, hash: BlockHash, strong: u128, payload: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(layout.file_bytes());
    bytes.extend_from_slice(MAGIC);
    for word in [VERSION, layout.layers, layout.kv_heads, layout.head_dim, layout.block_size] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.extend_from_slice(&hash.to_le_bytes());
    bytes.extend_from_slice(&strong.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    for value in payload {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    let checksum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

fn read_checked(path: &Path, layout: BlockLayout, hash: BlockHash, strong: u128) -> Result<Vec<f32>, String> {
    use std::io::Read;
    let expected = layout.file_bytes();
    let file = std::fs::File::open(path).map_err(|e| format!("opening it: {e}"))?;
    // Never more than a block's worth, whatever the file says.
    let mut bytes = Vec::with_capacity(expected);
    file.take(expected as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("reading it: {e}"))?;
    if bytes.len() != expected {
        return Err(format!("{} bytes where a block has {expected}", bytes.len()));
    }
    let (body, checksum) = bytes.split_at(expected - 4);
    if crc32fast::hash(body).to_le_bytes() != checksum {
        return Err("the checksum does not match".into());
    }
    let word = |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let found = BlockLayout { layers: word(8), kv_heads: word(12), head_dim: word(16), block_size: word(20) };
    if &body[..4] != MAGIC || word(4) != VERSION || found != layout {
        return Err(format!("it holds another layout: {found:?}"));
    }
    let mut hash_bytes = [0u8; 8];
    hash_bytes.copy_from_slice(&body[24..32]);
    let mut strong_bytes = [0u8; 16];
    strong_bytes.copy_from_slice(&body[32..48]);
    if u64::from_le_bytes(hash_bytes) != hash || u128::from_le_bytes(strong_bytes) != strong {
        return Err("it holds another block".into());
    }
    Ok(body[HEADER_BYTES..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LAYOUT: BlockLayout = BlockLayout { layers: 2, kv_heads: 1, head_dim: 4, block_size: 2 };

    fn tier(dir: &Path, max_blocks: u64) -> (OffloadTier, broadcast::Receiver<KvEvent>) {
        let (events, receiver) = broadcast::channel(64);
        let options = OffloadOptions { dir: dir.to_path_buf(), max_bytes: max_blocks * LAYOUT.file_bytes() as u64 };
        (OffloadTier::open(&options, "m", LAYOUT, events).unwrap(), receiver)
    }

    fn payload(seed: f32) -> Vec<f32> {
        (0..LAYOUT.floats()).map(|i| seed + i as f32).collect()
    }

    fn wait_written(tier: &OffloadTier, hash: BlockHash, strong: u128) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tier.matching(&[hash], &[strong]) == 0 {
            assert!(std::time::Instant::now() < deadline, "block {hash} never written");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_spilled_block_reads_back_and_the_budget_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tier, mut events) = tier(dir.path(), 2);
        for (hash, seed) in [(1, 0.0), (2, 100.0)] {
            tier.spill(hash, u128::from(hash) << 64, &payload(seed));
            wait_written(&tier, hash, u128::from(hash) << 64);
        }
        assert_eq!(tier.read(1, 1 << 64), Some(payload(0.0)));
        assert_eq!(tier.read(1, 7), None, "another prefix with the same chained hash");
        // A third block goes over the budget: the least recently used (2; 1 was just read) goes.
        tier.spill(3, 3 << 64, &payload(200.0));
        wait_written(&tier, 3, 3 << 64);
        assert!(!tier.contains(2) && tier.contains(1) && tier.contains(3));
        let seen: Vec<KvEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert!(seen.contains(&KvEvent::OffloadRemoved { blocks: vec![2] }), "{seen:?}");
        assert!(seen.contains(&KvEvent::Offloaded { blocks: vec![3] }), "{seen:?}");
        assert_eq!(tier.matching(&[1, 3, 2], &[1 << 64, 3 << 64, 2 << 64]), 2);
    }

    #[test]
    fn a_damaged_file_is_refused_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tier, _events) = tier(dir.path(), 4);
        tier.spill(9, 9, &payload(1.0));
        wait_written(&tier, 9, 9);
        let path = tier.path(9);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 5] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(tier.read(9, 9), None);
        assert!(!tier.contains(9));
        assert_eq!(tier.counters.rejected.load(Ordering::Relaxed), 1);
        // A sound file of another layout, or of another block, is refused too.
        let other = BlockLayout { head_dim: 8, ..LAYOUT };
        let elsewhere = dir.path().join("other.kvb");
        std::fs::write(&elsewhere, encode(other, 9, 9, &vec![0.0; other.floats()])).unwrap();
        assert!(read_checked(&elsewhere, LAYOUT, 9, 9).is_err());
        std::fs::write(&elsewhere, encode(LAYOUT, 9, 9, &payload(2.0))).unwrap();
        assert_eq!(read_checked(&elsewhere, LAYOUT, 9, 9), Ok(payload(2.0)));
        assert!(read_checked(&elsewhere, LAYOUT, 10, 9).is_err());
        assert!(read_checked(&elsewhere, LAYOUT, 9, 10).is_err());
    }

    #[test]
    fn start_up_empties_the_folder_and_a_budget_below_one_block_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(folder_name("m"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("00000000000000aa.kvb"), b"stale").unwrap();
        std::fs::write(sub.join("notes.txt"), b"kept").unwrap();
        let (_tier, _events) = tier(dir.path(), 1);
        assert!(!sub.join("00000000000000aa.kvb").exists());
        assert!(sub.join("notes.txt").exists(), "only block files are removed");
        let (events, _) = broadcast::channel(4);
        let small = OffloadOptions { dir: dir.path().to_path_buf(), max_bytes: 10 };
        assert!(OffloadTier::open(&small, "m", LAYOUT, events).is_err());
    }
}
