//! The encoder's word cache: the ids of recently merged words (pre-tokens), so a frequent word is
//! merged once.
//!
//! Every word of every prompt's new text is looked up, from all the runtime's threads at once, so
//! a lookup must not write shared memory: a cache that takes a lock or marks an entry on a hit
//! (quick_cache did both) moves those cache lines between the cores on every word, which made a
//! lookup cost 150-200 ns in the server against 17 ns on one thread. Here a lookup only reads.
//!
//! The cache is a table of one-cache-line slots, each a seqlock: a version (odd while a writer
//! holds it) and the word's bytes and ids, all atomics. A reader copies the slot between two reads
//! of the version and keeps the copy only if the version is even and unchanged, so it never acts on
//! a half-written slot (it treats one as a miss); a writer that finds the slot held skips its
//! insert. A word may sit in either of two neighbouring slots, chosen by a hash seeded per process
//! (clients choose the words); when both are taken, one of them is replaced. The table has exactly
//! the entries it was given, allocated when the model loads: 64 bytes each.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

/// Pre-tokens longer than this are merged each time (rare, and they would crowd the cache).
const MAX_CACHED_WORD_BYTES: usize = 32;
/// Ids of a cached word; a word of more is merged each time.
const MAX_CACHED_WORD_IDS: usize = 5;

const KEY_WORDS: usize = MAX_CACHED_WORD_BYTES / 8;

/// A word's bytes, zero-padded, as the slot holds them.
type Key = [u64; KEY_WORDS];

/// One entry: `version`, the key, then `len | count << 8 | id0 << 32`, `id1 | id2 << 32`,
/// `id3 | id4 << 32`. `version` 0: never written.
#[derive(Default)]
#[repr(align(64))]
struct Slot {
    version: AtomicU64,
    key: [AtomicU64; KEY_WORDS],
    ids: [AtomicU64; 3],
}

/// A cached word's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CachedIds {
    len: u8,
    ids: [u32; MAX_CACHED_WORD_IDS],
}

impl CachedIds {
    pub(super) fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len)]
    }
}

pub struct WordCache {
    slots: Box<[Slot]>,
    hasher: foldhash::fast::RandomState,
    /// Slots ever written (a slot is never emptied).
    used: AtomicUsize,
}

impl std::fmt::Debug for WordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordCache").field("entries", &self.len()).field("slots", &self.slots.len()).finish()
    }
}

impl WordCache {
    /// A cache of at most `entries` words; `None` for 0 (off).
    pub fn new(entries: usize) -> Option<WordCache> {
        (entries > 0).then(|| WordCache {
            slots: (0..entries).map(|_| Slot::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            used: AtomicUsize::new(0),
        })
    }

    /// Words held now.
    pub fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where `word` would be cached (its first candidate slot), or `None` for a word too long.
    pub(super) fn slot_of(&self, word: &[u8]) -> Option<usize> {
        (word.len() <= MAX_CACHED_WORD_BYTES).then(|| {
            let hash = self.hasher.hash_one(word);
            // The hash scaled onto the slots: exactly `entries` of them, none favoured.
            ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
        })
    }

    /// Reads the first slot of each of the next few words before any is looked up: the table is
    /// larger than the processor's caches, so each lookup is a miss, and misses issued together
    /// overlap where one after another they queue (in the server, a lookup's first read was 3/4
    /// of the scan).
    pub(super) fn prefetch(&self, slots: impl Iterator<Item = usize>) {
        let versions = slots.fold(0u64, |sum, index| sum.wrapping_add(self.slots[index].version.load(Ordering::Relaxed)));
        std::hint::black_box(versions);
    }

    /// The ids cached for `word`, whose slot is `first` (from [`WordCache::slot_of`]).
    pub(super) fn get(&self, first: usize, word: &[u8]) -> Option<CachedIds> {
        let key = key_of(word)?;
        self.read(first, word.len(), &key).or_else(|| self.read(self.next(first), word.len(), &key))
    }

    /// Caches `ids` as `word`'s (whose slot is `first`); a word or ids too long for a slot are not
    /// kept, and neither is a word whose slots another thread is writing.
    pub(super) fn insert(&self, first: usize, word: &[u8], ids: &[u32]) {
        let Some(key) = key_of(word) else { return };
        if ids.is_empty() || ids.len() > MAX_CACHED_WORD_IDS {
            return;
        }
        let second = self.next(first);
        let (first_version, second_version) =
            (self.slots[first].version.load(Ordering::Relaxed), self.slots[second].version.load(Ordering::Relaxed));
        // An empty slot first, else one of the two taken, varying with how often the first changed.
        let index = if first_version == 0 || (second_version != 0 && first_version & 2 == 0) { first } else { second };
        self.write(index, word.len(), &key, ids);
    }

    fn next(&self, index: usize) -> usize {
        if index + 1 == self.slots.len() { 0 } else { index + 1 }
    }

    fn read(&self, index: usize, len: usize, key: &Key) -> Option<CachedIds> {
        let slot = &self.slots[index];
        let before = slot.version.load(Ordering::Acquire);
        if before == 0 || before & 1 == 1 {
            return None;
        }
        let stored_key: Key = std::array::from_fn(|i| slot.key[i].load(Ordering::Relaxed));
        let words: [u64; 3] = std::array::from_fn(|i| slot.ids[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        if slot.version.load(Ordering::Relaxed) != before {
            return None;
        }
        let stored_len = (words[0] & 0xFF) as usize;
        if stored_len != len || stored_key != *key {
            return None;
        }
        let count = ((words[0] >> 8) & 0xFF) as u8;
        let low = |word: u64| word as u32;
        let high = |word: u64| (word >> 32) as u32;
        let ids = [high(words[0]), low(words[1]), high(words[1]), low(words[2]), high(words[2])];
        (1..=MAX_CACHED_WORD_IDS as u8).contains(&count).then_some(CachedIds { len: count, ids })
    }

    fn write(&self, index: usize, len: usize, key: &Key, ids: &[u32]) {
        let slot = &self.slots[index];
        let before = slot.version.load(Ordering::Relaxed);
        if before & 1 == 1
            || slot.version.compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let id = |i: usize| u64::from(ids.get(i).copied().unwrap_or(0));
        let words = [len as u64 | (ids.len() as u64) << 8 | id(0) << 32, id(1) | id(2) << 32, id(3) | id(4) << 32];
        for (stored, value) in slot.key.iter().zip(key) {
            stored.store(*value, Ordering::Relaxed);
        }
        for (stored, value) in slot.ids.iter().zip(words) {
            stored.store(value, Ordering::Relaxed);
        }
        // Versions stay even when released and never wrap back to 0 (2^63 writes).
        slot.version.store(before + 2, Ordering::Release);
        if before == 0 {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `word` zero-padded into a slot's key; `None` for a word too long to cache. Built a byte at a
/// time past the whole chunks: a copy of a few bytes through `memcpy` cost more than the lookup.
fn key_of(word: &[u8]) -> Option<Key> {
    if word.len() > MAX_CACHED_WORD_BYTES {
        return None;
    }
    let mut key = [0u64; KEY_WORDS];
    let chunks = word.chunks_exact(8);
    let tail = chunks.remainder();
    let whole = chunks.len();
    for (slot, chunk) in key.iter_mut().zip(chunks) {
        *slot = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    if let Some(slot) = key.get_mut(whole) {
        *slot = tail.iter().rev().fold(0, |value, &b| value << 8 | u64::from(b));
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl WordCache {
        fn put(&self, word: &[u8], ids: &[u32]) {
            if let Some(slot) = self.slot_of(word) {
                self.insert(slot, word, ids);
            }
        }

        fn ids(&self, word: &[u8]) -> Option<Vec<u32>> {
            self.get(self.slot_of(word)?, word).map(|hit| hit.as_slice().to_vec())
        }
    }

    #[test]
    fn keeps_words_up_to_its_bound_and_refuses_what_a_slot_cannot_hold() {
        let cache = WordCache::new(4).unwrap();
        assert!(WordCache::new(0).is_none());
        cache.put(b" kalo", &[1, 2]);
        assert_eq!(cache.ids(b" kalo"), Some(vec![1, 2]));
        assert_eq!(cache.ids(b" kal"), None, "a prefix is another word");
        assert_eq!(cache.ids(b" kalo\0"), None, "a trailing zero byte is part of the word, not padding");
        cache.put(&[b'x'; 33], &[1]);
        cache.put(b"six ids", &[1, 2, 3, 4, 5, 6]);
        cache.put(b"no ids", &[]);
        assert_eq!((cache.ids(&[b'x'; 33]), cache.ids(b"six ids"), cache.ids(b"no ids")), (None, None, None));
        let full = [u32::MAX, 7, 8, 9, 10];
        cache.put(&[b'y'; 32], &full);
        assert_eq!(cache.ids(&[b'y'; 32]), Some(full.to_vec()));
        for n in 0..100u32 {
            cache.put(format!("w{n}").as_bytes(), &[n]);
        }
        assert!((1..=4).contains(&cache.len()), "{}", cache.len());
        // Whatever it kept is right.
        for n in 0..100u32 {
            if let Some(ids) = cache.ids(format!("w{n}").as_bytes()) {
                assert_eq!(ids, [n]);
            }
        }
    }

    #[test]
    fn one_entry_holds_one_word() {
        let cache = WordCache::new(1).unwrap();
        cache.put(b"a word", &[3]);
        cache.put(b"another", &[4]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.ids(b"another"), Some(vec![4]));
        assert_eq!(cache.ids(b"a word"), None);
    }

    /// Threads writing words that share slots while others read them: a reader gets a word's own
    /// ids or nothing, never another word's or a mix.
    #[test]
    fn readers_never_see_a_half_written_slot() {
        let cache = WordCache::new(2).unwrap();
        let ids_of = |n: u32| -> Vec<u32> { (0..=n % 5).map(|i| n * 10 + i).collect() };
        let words: Vec<String> = (0..16u32).map(|n| format!("word number {n}")).collect();
        let hits = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for writer in 0..2u32 {
                let (cache, words) = (&cache, &words);
                scope.spawn(move || {
                    for round in 0..20_000u32 {
                        let n = (round * 7 + writer) % 16;
                        cache.put(words[n as usize].as_bytes(), &ids_of(n));
                    }
                });
            }
            for _ in 0..2 {
                let (cache, words, hits) = (&cache, &words, &hits);
                scope.spawn(move || {
                    for round in 0..40_000u32 {
                        let n = round % 16;
                        if let Some(ids) = cache.ids(words[n as usize].as_bytes()) {
                            assert_eq!(ids, ids_of(n));
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert!(hits.load(Ordering::Relaxed) > 0);
    }
}
