//! The bound on what preprocessing (chat templates, tokenization) holds at once: a number of
//! texts preprocessed at a time, and a byte budget charged with what each will allocate, waited
//! for before it starts. A text whose charge is more than the whole budget is refused at once.
//!
//! Tokenizing is the costly half. Hugging Face's `tokenizers` keeps, for each piece the
//! pre-tokenizer splits off (one per input byte at worst: digits, which byte-level BPE models such
//! as SmolLM2 split one by one, or `a.a.a.`), a `Split` holding a `NormalizedString` (its original
//! and normalized text and one `(usize, usize)` alignment per byte) and its `Token`s (id, text,
//! offsets), in vectors that grow by doubling; only then is the `Encoding` (ids, type ids, token
//! strings, offsets, masks) built from them.
//!
//! How much, measured two ways on SmolLM2's tokenizer:
//! - `tests/tokenize_memory.rs` counts the bytes mimalloc hands out (its size classes included)
//!   live at the peak of one `encode` of 1 MiB: 245 per input byte for digits, 221 for `a.`
//!   pairs, 209 for `a ` pairs or random letters between spaces, 133-137 for multi-byte
//!   characters. `encode_fast` (no offsets) peaks the same: the split pieces dominate, and it
//!   saves only the offsets the `Encoding` keeps (76 bytes per input byte at worst, 68 without
//!   offsets; the preprocessor keeps just the ids, 4 per token, and drops the rest at once).
//! - The server's resident memory (`VmHWM`) grows by 456 bytes per byte for one 1 MiB prompt of
//!   digits (`/v1/messages/count_tokens`, one at a time), 440 for 2 MiB, 383 for 4 MiB: beyond
//!   the live bytes, mimalloc keeps the blocks freed as the vectors double committed for a
//!   moment (its purge delay), and pages are only partly used.
//!
//! [`TOKENIZE_BYTES_PER_INPUT_BYTE`] charges the resident view, rounded up (512): the budget then
//! bounds what the process really holds. The test fails if a new `tokenizers` allocates more than
//! half of it at the peak.
//!
//! Rendering a chat template copies the messages a few times (the JSON values, minijinja's
//! values, the output): 5.3 to 6 bytes per input byte at the peak, by the same count
//! ([`RENDER_BYTES_PER_INPUT_BYTE`]).

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::BridgeError;

/// Bytes of memory one input byte costs at the peak of tokenizing it (measured: 245 live on the
/// heap, 456 resident at worst; see the module docs).
pub const TOKENIZE_BYTES_PER_INPUT_BYTE: usize = 512;
/// Bytes of memory one byte of a chat's messages costs at the peak of rendering its template
/// (measured: 6 live on the heap at worst).
pub const RENDER_BYTES_PER_INPUT_BYTE: usize = 8;
/// Texts up to this long are preprocessed in place on the runtime thread, without waiting for the
/// budget: a thread does one at a time, so the runtime's threads bound them (8 MiB each at most),
/// and a flood of long prompts does not hold short ones up.
pub const INLINE_BYTES: usize = 16 << 10;
/// The default budget: 1 GiB, two 1 MiB prompts at once, a 2 MiB prompt (about half a million
/// tokens of English) at most.
pub const DEFAULT_MAX_TOKENIZING_BYTES: usize = 1 << 30;
/// The budget is counted in units of this many bytes, so that a tokio semaphore's `u32` counts
/// reach terabytes.
const UNIT: usize = 1 << 10;

/// The bounds of [`PreprocessBudget`] (flags of `tritium serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreprocessLimits {
    /// Heap bytes all texts being preprocessed may cost at once (`--max-tokenizing-bytes`).
    pub max_bytes: usize,
    /// Texts preprocessed at once (`--max-concurrent-tokenizations`).
    pub max_concurrent: usize,
}

/// The global allocator's hook, see [`set_reclaim`].
static RECLAIM: OnceLock<fn()> = OnceLock::new();

/// Sets what is called on a blocking-pool thread once it has tokenized a long text: the global
/// allocator's way to hand the memory that thread freed back to the system. The binary that
/// chooses the allocator sets it once (mimalloc keeps a thread's freed pages until that thread
/// allocates again, and a blocking-pool thread may then idle for seconds before it exits).
pub fn set_reclaim(hook: fn()) {
    let _ = RECLAIM.set(hook);
}

impl Default for PreprocessLimits {
    fn default() -> Self {
        PreprocessLimits {
            max_bytes: DEFAULT_MAX_TOKENIZING_BYTES,
            max_concurrent: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// See the module docs. One is shared by every model's preprocessor.
#[derive(Debug)]
pub struct PreprocessBudget {
    limits: PreprocessLimits,
    /// One permit per text preprocessed at once.
    slots: Arc<Semaphore>,
    /// One permit per [`UNIT`] of heap.
    units: Arc<Semaphore>,
    total_units: u32,
}

/// What one text holds of the budget while it is preprocessed; dropping it gives it back.
#[derive(Debug)]
pub struct PreprocessPermit {
    _slot: Option<OwnedSemaphorePermit>,
    units: Option<OwnedSemaphorePermit>,
}

impl PreprocessPermit {
    /// A permit for a text preprocessed in place, which holds nothing of the budget.
    fn inline() -> PreprocessPermit {
        PreprocessPermit { _slot: None, units: None }
    }

    /// Hands the memory this thread freed back to the system (see [`set_reclaim`]), when the
    /// text was long; call it on the thread that preprocessed the text, once done.
    pub fn reclaim(&self) {
        if self.units.is_some()
            && let Some(reclaim) = RECLAIM.get()
        {
            reclaim();
        }
    }
}

impl Default for PreprocessBudget {
    fn default() -> Self {
        PreprocessBudget::new(PreprocessLimits::default())
    }
}

impl PreprocessBudget {
    pub fn new(limits: PreprocessLimits) -> PreprocessBudget {
        let total_units = u32::try_from(limits.max_bytes / UNIT).unwrap_or(u32::MAX);
        PreprocessBudget {
            slots: Arc::new(Semaphore::new(limits.max_concurrent.clamp(1, Semaphore::MAX_PERMITS))),
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            limits,
        }
    }

    pub fn limits(&self) -> &PreprocessLimits {
        &self.limits
    }

    /// Waits for room to preprocess `input_bytes` of text that costs `bytes_per_input_byte` each
    /// at its peak; `what` names the text for the error when it can never fit. Texts of at most
    /// [`INLINE_BYTES`] do not wait.
    pub async fn admit(
        &self,
        what: &str,
        input_bytes: usize,
        bytes_per_input_byte: usize,
    ) -> Result<PreprocessPermit, BridgeError> {
        if input_bytes <= INLINE_BYTES {
            return Ok(PreprocessPermit::inline());
        }
        let charge = input_bytes.saturating_mul(bytes_per_input_byte);
        let units = u32::try_from(charge.div_ceil(UNIT)).ok().filter(|&units| units <= self.total_units);
        let Some(units) = units else {
            return Err(BridgeError::TooLarge(format!(
                "the {what} is {input_bytes} bytes; preprocessing it would take about {charge} bytes of memory, more than \
                 the server allows all prompts at once ({} bytes, --max-tokenizing-bytes)",
                self.limits.max_bytes
            )));
        };
        let closed = |_| BridgeError::Internal("the preprocessing budget is closed".into());
        // Bytes first, then a slot: a text waiting for bytes does not hold a slot a smaller one
        // could use.
        let units = Arc::clone(&self.units).acquire_many_owned(units).await.map_err(closed)?;
        let slot = Arc::clone(&self.slots).acquire_owned().await.map_err(closed)?;
        Ok(PreprocessPermit { _slot: Some(slot), units: Some(units) })
    }

    /// Bytes of the budget free now (for tests and metrics).
    pub fn available_bytes(&self) -> usize {
        self.units.available_permits().saturating_mul(UNIT)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(max_bytes: usize, max_concurrent: usize) -> PreprocessBudget {
        PreprocessBudget::new(PreprocessLimits { max_bytes, max_concurrent })
    }

    #[tokio::test]
    async fn charges_bytes_times_the_factor_and_gives_them_back() {
        let budget = budget(64 << 20, 8);
        let permit = budget.admit("prompt", 1 << 20, 16).await.unwrap();
        assert_eq!(budget.available_bytes(), 48 << 20);
        let second = budget.admit("prompt", 2 << 20, 8).await.unwrap();
        assert_eq!(budget.available_bytes(), 32 << 20);
        drop(permit);
        drop(second);
        assert_eq!(budget.available_bytes(), 64 << 20);
    }

    #[tokio::test]
    async fn short_texts_take_nothing_and_never_wait() {
        let budget = budget(1 << 20, 1);
        let _whole = budget.admit("prompt", 1 << 20, 1).await.unwrap();
        assert_eq!(budget.available_bytes(), 0);
        let short = tokio::time::timeout(Duration::from_secs(5), budget.admit("prompt", INLINE_BYTES, 1024)).await;
        assert!(short.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_text_larger_than_the_whole_budget_is_refused_at_once() {
        let budget = budget(64 << 20, 2);
        let error = budget.admit("prompt", (1 << 20) + 1, 64).await.unwrap_err();
        assert!(matches!(&error, BridgeError::TooLarge(message) if message.contains("--max-tokenizing-bytes")), "{error}");
        assert_eq!(error.http_status(), 413);
        // Exactly the whole budget fits; an overflowing charge is refused, not wrapped.
        assert!(budget.admit("prompt", 1 << 20, 64).await.is_ok());
        assert!(budget.admit("prompt", usize::MAX / 2, 4).await.is_err());
    }

    #[tokio::test]
    async fn waits_for_bytes_then_for_a_slot() {
        let budget = Arc::new(budget(64 << 20, 1));
        let first = budget.admit("prompt", 1 << 20, 48).await.unwrap();
        // 16 MiB are left: a 32 MiB charge waits until the first is done.
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.admit("prompt", 1 << 20, 32).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();

        // One slot: with bytes to spare, a second text still waits for the first to finish.
        let first = budget.admit("prompt", 1 << 20, 1).await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(50), budget.admit("prompt", 1 << 20, 1)).await;
        assert!(second.is_err(), "a second text ran beside the first with one slot");
        drop(first);
        assert!(budget.admit("prompt", 1 << 20, 1).await.is_ok());
        assert_eq!(budget.available_bytes(), 64 << 20);
    }
}
