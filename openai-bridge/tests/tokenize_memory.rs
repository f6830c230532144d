//! What tokenizing costs in memory, per input byte: the measurement behind the bridge's
//! `TOKENIZE_BYTES_PER_INPUT_BYTE` (issue 46; `src/preprocess/budget.rs` has the figures). A
//! counting allocator records the peak of live heap bytes while one text is tokenized, and what
//! the result still holds once the call returns.
//!
//! Texts are the worst cases for a byte-level BPE tokenizer (SmolLM2's): one pre-tokenizer split
//! and one token per input byte (digits, which SmolLM2 splits one by one; `a.` pairs), one per
//! two bytes (`a ` pairs, random letters between spaces), and multi-byte characters.
//!
//! ```text
//! TOKENIZE_MEMORY_BYTES=1048576 cargo test -p tritium-openai-bridge --test tokenize_memory -- --nocapture
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mimalloc::MiMalloc;
use tritium_openai_bridge::preprocess::{Preprocessor, RENDER_BYTES_PER_INPUT_BYTE, TOKENIZE_BYTES_PER_INPUT_BYTE};

/// The server's allocator (mimalloc), counting the bytes it really hands out (its size classes
/// round small allocations up, e.g. a 2-byte string takes 8) and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn usable(ptr: *mut u8) -> usize {
    // SAFETY: `ptr` was allocated by mimalloc and not yet freed.
    unsafe { libmimalloc_sys::mi_usable_size(ptr.cast()) }
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to mimalloc unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { MiMalloc.alloc(layout) };
        if !ptr.is_null() {
            grew(usable(ptr));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(usable(ptr), Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = usable(ptr);
        let moved = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(before, Ordering::Relaxed);
            grew(usable(moved));
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak and retained heap bytes of `run`, above what was live before it.
fn measure<T>(run: impl FnOnce() -> T) -> (usize, usize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = run();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    (peak, kept, out)
}

/// A deterministic stream of small numbers (no `rand` in the tree for this).
fn lcg(seed: &mut u64) -> usize {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 33) as usize
}

fn texts(bytes: usize) -> Vec<(&'static str, String)> {
    let mut seed = 46;
    let digits: String = (0..bytes).map(|_| char::from(b'0' + (lcg(&mut seed) % 10) as u8)).collect();
    let letters: String = (0..bytes / 2).flat_map(|_| [char::from(b'a' + (lcg(&mut seed) % 26) as u8), ' ']).collect();
    vec![
        ("digits", digits),
        ("a. pairs", "a.".repeat(bytes / 2)),
        ("a-space pairs", "a ".repeat(bytes / 2)),
        ("letters and spaces", letters),
        ("é (2-byte)", "é".repeat(bytes / 2)),
        ("日 (3-byte)", "日".repeat(bytes / 3)),
        ("🙂 (4-byte)", "🙂".repeat(bytes / 4)),
    ]
}

#[test]
fn tokenizing_costs_at_most_the_charged_bytes_per_input_byte() -> Result<(), Box<dyn std::error::Error>> {
    // 256 KiB costs per byte what 1 MiB does (within a few bytes), in a quarter of the time.
    let bytes: usize = std::env::var("TOKENIZE_MEMORY_BYTES").ok().map(|b| b.parse()).transpose()?.unwrap_or(256 << 10);
    let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::SMOLLM2_GGUF);
    let pre = Arc::new(Preprocessor::new(Arc::new(tritium_llm::card_from_gguf_file(&path)?))?);
    let tokenizer = pre.tokenizer();
    println!("{bytes} input bytes; heap bytes per input byte (peak while tokenizing / kept by the result)");
    let mut worst = 0.0f64;
    for (name, text) in texts(bytes) {
        let n = text.len() as f64;
        let (peak, kept, encoding) = measure(|| tokenizer.encode(text.as_str(), false));
        let tokens = encoding.map_err(|e| e.to_string())?.len();
        let (fast_peak, fast_kept, fast) = measure(|| tokenizer.encode_fast(text.as_str(), false));
        drop(fast);
        let (ids_peak, ids_kept, ids) = measure(|| pre.encode(&text, false));
        drop(ids);
        println!(
            "{name:>20}: {tokens:>8} tokens | encode {:6.1} / {:6.1} | encode_fast {:6.1} / {:6.1} | Preprocessor {:6.1} / {:6.1}",
            peak as f64 / n,
            kept as f64 / n,
            fast_peak as f64 / n,
            fast_kept as f64 / n,
            ids_peak as f64 / n,
            ids_kept as f64 / n,
        );
        worst = worst.max(ids_peak as f64 / n);
    }
    // The charge is the resident cost, about twice the live peak (the module docs of
    // `preprocess::budget` say why); a tokenizer that allocates more must raise it.
    assert!(worst <= (TOKENIZE_BYTES_PER_INPUT_BYTE / 2) as f64, "{worst} heap bytes per input byte at the peak");
    let messages = [serde_json::json!({"role": "user", "content": "a ".repeat(bytes / 2)})];
    let (peak, kept, rendered) = measure(|| pre.render_chat(&messages, true, None));
    drop(rendered);
    println!("chat template of one {bytes}-byte message: {:.1} / {:.1}", peak as f64 / bytes as f64, kept as f64 / bytes as f64);
    assert!(peak <= bytes * RENDER_BYTES_PER_INPUT_BYTE, "{peak} heap bytes to render {bytes}");
    Ok(())
}
