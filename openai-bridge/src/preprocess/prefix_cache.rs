//! The tokenizer prefix cache: a rendered prompt's token ids reused up to the longest prefix seen
//! before, so a request that shares a long system prompt or repeats a conversation's earlier turns
//! tokenizes only what follows.
//!
//! A prompt is cut where a *boundary token* starts: a special added token the tokenizer splits out
//! before anything else runs (not normalized, no `lstrip`/`rstrip`/`single_word`). The tokenizer
//! encodes the text between such tokens independently of what surrounds it, so the ids of
//! `text[..b]` for a boundary `b` are a prefix of the ids of `text`, and each piece from one
//! boundary to the next, which starts with its boundary token, encodes the same alone as in place.
//! A tokenizer for which that does not hold (one that truncates or pads, a `single_word` added
//! token, special tokens encoded as text) gets no cache. Tests check the ids against tokenizing
//! from scratch for every tokenizer the project ships.
//!
//! Each cached piece holds its own ids and the key of the piece before it, under a key that is a
//! keyed BLAKE3 hash of the whole prefix it ends (the key is drawn per cache, so a client cannot
//! aim a collision at another's prompt). A prefix is reused only when every piece of its chain is
//! still cached. The pieces are charged their ids' bytes plus what an entry costs (at least the
//! bytes bound over the entries bound, so both bounds hold); eviction is quick_cache's S3-FIFO.
//! A cache belongs to one preprocessor, which belongs to one loaded model card (tokenizer, chat
//! template, revision): a reloaded model gets a fresh cache.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use prometheus::{IntCounter, IntGauge};
use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};
use tokenizers::Tokenizer;

/// `--tokenizer-cache-bytes`'s default: what one model's cache may hold (Dynamo's default too).
pub const DEFAULT_TOKENIZER_CACHE_BYTES: u64 = 64 << 20;
/// `--tokenizer-cache-entries`'s default.
pub const DEFAULT_TOKENIZER_CACHE_ENTRIES: u64 = 1 << 18;
/// What an entry costs beyond its ids: its key twice (index and chain), the `Arc`, the index slot.
const ENTRY_OVERHEAD_BYTES: u64 = 128;
/// A piece shorter than this is joined to the next one: a prompt of many short messages, or a
/// client sending special tokens in bulk, does not make one entry (and one hash) per token.
const MIN_PIECE_BYTES: usize = 64;
/// The most boundaries one prompt is cut at; the text past the last is encoded whole.
const MAX_BOUNDARIES: usize = 1024;

/// The bounds of one model's cache; `bytes == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheLimits {
    pub bytes: u64,
    pub entries: u64,
    /// A prompt that reuses a cached prefix caches its later pieces too (else only a prompt
    /// that found nothing is cached).
    pub extend: bool,
}

impl Default for PrefixCacheLimits {
    fn default() -> Self {
        PrefixCacheLimits { bytes: DEFAULT_TOKENIZER_CACHE_BYTES, entries: DEFAULT_TOKENIZER_CACHE_ENTRIES, extend: true }
    }
}

/// Where a cache counts what it does (the frontend's metrics, labelled with the model).
#[derive(Debug, Clone)]
pub struct PrefixCacheCounters {
    /// Prompts that reused a cached prefix.
    pub hits: IntCounter,
    /// Prompts that found none.
    pub misses: IntCounter,
    /// Token ids taken from the cache.
    pub cached_tokens: IntCounter,
    /// Token ids the tokenizer produced for prompts that went through the cache.
    pub uncached_tokens: IntCounter,
    /// Bytes the cache charges for what it holds now.
    pub bytes: IntGauge,
    pub entries: IntGauge,
}

/// Counters no registry reads (a preprocessor outside a server, tests).
impl Default for PrefixCacheCounters {
    fn default() -> Self {
        let counter = || IntCounter::new("unregistered", "-").unwrap_or_else(|e| unreachable!("a valid name: {e}"));
        let gauge = || IntGauge::new("unregistered", "-").unwrap_or_else(|e| unreachable!("a valid name: {e}"));
        PrefixCacheCounters {
            hits: counter(),
            misses: counter(),
            cached_tokens: counter(),
            uncached_tokens: counter(),
            bytes: gauge(),
            entries: gauge(),
        }
    }
}

type Key = [u8; 32];

/// A prompt looked up in the cache, not yet tokenized (see [`PrefixCache::plan`]).
#[derive(Debug)]
pub struct Plan {
    cuts: Vec<usize>,
    keys: Vec<Key>,
    /// The longest cached prefix: the index of its last cut, and its ids.
    reused: Option<(usize, Vec<u32>)>,
    text_len: usize,
}

impl Plan {
    /// Bytes of the prompt its cached prefix does not cover: what is left to tokenize.
    pub fn uncached_bytes(&self) -> usize {
        match &self.reused {
            Some((index, _)) => self.text_len - self.cuts[*index],
            None => self.text_len,
        }
    }
}

#[derive(Debug)]
struct Piece {
    /// The piece before this one; `None` for the first piece of a prompt.
    parent: Option<Key>,
    ids: Box<[u32]>,
    /// Ids from the prompt's start through this piece.
    prefix_len: usize,
    charge: u64,
}

#[derive(Debug, Clone, Copy)]
struct ByCharge;

impl Weighter<Key, Arc<Piece>> for ByCharge {
    fn weight(&self, _: &Key, piece: &Arc<Piece>) -> u64 {
        piece.charge
    }
}

pub struct PrefixCache {
    /// Every added token the tokenizer splits out first, found the way it finds them.
    added: AhoCorasick,
    /// Per pattern of `added`: whether a prompt may be cut where it starts.
    boundary: Vec<bool>,
    secret: Key,
    pieces: Cache<Key, Arc<Piece>, ByCharge>,
    /// The least an entry is charged: both bounds hold through the one weight.
    min_charge: u64,
    extend: bool,
    counters: PrefixCacheCounters,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache").field("entries", &self.pieces.len()).field("bytes", &self.pieces.weight()).finish()
    }
}

impl PrefixCache {
    /// The cache for prompts of `tokenizer`, or why it can have none.
    pub fn new(tokenizer: &Tokenizer, limits: PrefixCacheLimits, counters: PrefixCacheCounters) -> Result<PrefixCache, String> {
        if limits.bytes == 0 || limits.entries == 0 {
            return Err("turned off".into());
        }
        if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
            return Err("the tokenizer truncates or pads".into());
        }
        if tokenizer.get_encode_special_tokens() {
            return Err("the tokenizer encodes special tokens as text".into());
        }
        let mut tokens: Vec<_> = tokenizer.get_added_tokens_decoder().into_values().filter(|t| !t.normalized).collect();
        if tokens.iter().any(|t| t.single_word) {
            return Err("an added token matches only as a single word".into());
        }
        tokens.retain(|t| !t.content.is_empty());
        tokens.sort_by(|a, b| a.content.cmp(&b.content));
        let boundary: Vec<bool> = tokens.iter().map(|t| t.special && !t.lstrip && !t.rstrip).collect();
        if !boundary.contains(&true) {
            return Err("no special token splits its prompts".into());
        }
        let added = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|t| t.content.as_str()))
            .map_err(|e| format!("cannot index the added tokens: {e}"))?;
        let estimated = usize::try_from((limits.bytes / 8192).clamp(16, 1 << 20)).unwrap_or(16);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(limits.bytes)
            .shards(1)
            .build()
            .map_err(|e| format!("cannot size the cache: {e:?}"))?;
        // std's hasher keys come from the OS's randomness: 128 bits of it, unknown to clients.
        let state = RandomState::new();
        let mut secret = [0u8; 32];
        for (index, chunk) in secret.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&state.hash_one(index).to_le_bytes());
        }
        Ok(PrefixCache {
            added,
            boundary,
            secret,
            pieces: Cache::with_options(options, ByCharge, Default::default(), Default::default()),
            min_charge: (limits.bytes / limits.entries).max(ENTRY_OVERHEAD_BYTES),
            extend: limits.extend,
            counters,
        })
    }

    /// The ids of `text`, as `encode` gives them for the whole text, from the cache where a prefix
    /// of it is there and from `encode` for the rest (piece by piece, each then cached).
    pub fn encode<E>(&self, text: &str, encode: impl Fn(&str) -> Result<Vec<u32>, E>) -> Result<Vec<u32>, E> {
        self.finish(text, self.plan(text), encode)
    }

    /// Where `text` is cut and the longest prefix of it cached: what [`PrefixCache::finish`]
    /// starts from (and [`Plan::uncached_bytes`] what is left to tokenize).
    pub fn plan(&self, text: &str) -> Plan {
        let cuts = self.cuts(text);
        let keys = self.keys(text, &cuts);
        // Room for the rest of the text too (a token takes at least a byte): the cached ids are
        // not copied again when the rest is added.
        let reused = keys
            .iter()
            .enumerate()
            .rev()
            .find_map(|(index, key)| self.assemble(key, text.len().saturating_sub(cuts[index])).map(|ids| (index, ids)));
        Plan { cuts, keys, reused, text_len: text.len() }
    }

    /// The ids of `text` from its `plan` (made by [`PrefixCache::plan`] on the same text).
    pub fn finish<E>(&self, text: &str, plan: Plan, encode: impl Fn(&str) -> Result<Vec<u32>, E>) -> Result<Vec<u32>, E> {
        let Plan { cuts, keys, reused, text_len } = plan;
        debug_assert_eq!(text_len, text.len());
        let (mut ids, first_new) = match reused {
            Some((index, ids)) => {
                self.counters.hits.inc();
                self.counters.cached_tokens.inc_by(ids.len() as u64);
                (ids, index + 1)
            }
            None => {
                self.counters.misses.inc();
                (Vec::new(), 0)
            }
        };
        let cached = ids.len();
        // A token takes at least a byte: the rest of the text fits without growing the ids (a
        // long prompt's cached ids would be copied at each doubling). Reused ids have that room.
        let reused_bytes = first_new.checked_sub(1).map_or(0, |index| cuts[index]);
        ids.reserve(text.len().saturating_sub(reused_bytes));
        let last = match (first_new, self.extend) {
            (0, _) | (_, true) => {
                for index in first_new..cuts.len() {
                    let start = if index == 0 { 0 } else { cuts[index - 1] };
                    let piece = encode(&text[start..cuts[index]])?;
                    ids.extend_from_slice(&piece);
                    let parent = index.checked_sub(1).map(|before| keys[before]);
                    self.store(keys[index], parent, piece, ids.len());
                }
                cuts.last().copied().unwrap_or(0)
            }
            // Not extending: the rest is one piece, encoded at once and not kept.
            (_, false) => cuts[first_new - 1],
        };
        ids.extend(encode(&text[last..])?);
        self.counters.uncached_tokens.inc_by((ids.len() - cached) as u64);
        self.counters.bytes.set(i64::try_from(self.pieces.weight()).unwrap_or(i64::MAX));
        self.counters.entries.set(i64::try_from(self.pieces.len()).unwrap_or(i64::MAX));
        Ok(ids)
    }

    /// Where `text` is cut: the starts of its boundary tokens past its first byte, each piece at
    /// least [`MIN_PIECE_BYTES`] long, at most [`MAX_BOUNDARIES`] of them.
    fn cuts(&self, text: &str) -> Vec<usize> {
        let mut cuts = Vec::new();
        let mut last = 0;
        for found in self.added.find_iter(text) {
            let start = found.start();
            if self.boundary[found.pattern().as_usize()] && start >= last + MIN_PIECE_BYTES {
                cuts.push(start);
                last = start;
                if cuts.len() == MAX_BOUNDARIES {
                    break;
                }
            }
        }
        cuts
    }

    /// The key of each prefix `text[..cut]`, hashed in one pass.
    fn keys(&self, text: &str, cuts: &[usize]) -> Vec<Key> {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        let mut hashed = 0;
        cuts.iter()
            .map(|&cut| {
                hasher.update(&text.as_bytes()[hashed..cut]);
                hashed = cut;
                *hasher.finalize().as_bytes()
            })
            .collect()
    }

    /// The ids of the prefix cached under `key`, if its whole chain is still there, with room
    /// for `more`.
    fn assemble(&self, key: &Key, more: usize) -> Option<Vec<u32>> {
        let last = self.pieces.get(key)?;
        let mut chain = vec![Arc::clone(&last)];
        let mut parent = last.parent;
        while let Some(key) = parent {
            let piece = self.pieces.get(&key)?;
            parent = piece.parent;
            chain.push(piece);
        }
        let mut ids = Vec::with_capacity(last.prefix_len.saturating_add(more));
        for piece in chain.iter().rev() {
            ids.extend_from_slice(&piece.ids);
        }
        (ids.len() == last.prefix_len).then_some(ids)
    }

    fn store(&self, key: Key, parent: Option<Key>, ids: Vec<u32>, prefix_len: usize) {
        let bytes = (ids.len() * size_of::<u32>()) as u64 + ENTRY_OVERHEAD_BYTES;
        let charge = bytes.max(self.min_charge);
        self.pieces.insert(key, Arc::new(Piece { parent, ids: ids.into_boxed_slice(), prefix_len, charge }));
    }

    /// Bytes charged for what is cached now.
    pub fn bytes(&self) -> u64 {
        self.pieces.weight()
    }

    pub fn entries(&self) -> usize {
        self.pieces.len()
    }
}
