//! The tokenizer prefix cache's families, per model: `{prefix}_tokenizer_cache_hits_total`,
//! `…_misses_total`, `…_cached_tokens_total`, `…_uncached_tokens_total` (Dynamo's names under its
//! `dynamo_frontend` prefix), and the gauges `…_bytes` and `…_entries`.

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::preprocess::PrefixCacheCounters;

#[derive(Debug)]
pub(super) struct TokenizerCacheFamilies {
    hits: IntCounterVec,
    misses: IntCounterVec,
    cached_tokens: IntCounterVec,
    uncached_tokens: IntCounterVec,
    bytes: IntGaugeVec,
    entries: IntGaugeVec,
}

impl TokenizerCacheFamilies {
    pub(super) fn new(prefix: &str) -> TokenizerCacheFamilies {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(format!("{prefix}_tokenizer_cache_{name}_total"), help), &["model"])
                .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"))
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(format!("{prefix}_tokenizer_cache_{name}"), help), &["model"])
                .unwrap_or_else(|e| unreachable!("a valid metric name: {e}"))
        };
        TokenizerCacheFamilies {
            hits: counter("hits", "Prompts whose token ids started with a prefix from the tokenizer cache"),
            misses: counter("misses", "Prompts that found no prefix in the tokenizer cache"),
            cached_tokens: counter("cached_tokens", "Prompt token ids taken from the tokenizer cache"),
            uncached_tokens: counter("uncached_tokens", "Prompt token ids tokenized after a tokenizer cache lookup"),
            bytes: gauge("bytes", "Bytes the tokenizer cache charges for what it holds"),
            entries: gauge("entries", "Prompt pieces in the tokenizer cache"),
        }
    }

    pub(super) fn counters(&self, model: &str) -> PrefixCacheCounters {
        let labels = [model];
        PrefixCacheCounters {
            hits: self.hits.with_label_values(&labels),
            misses: self.misses.with_label_values(&labels),
            cached_tokens: self.cached_tokens.with_label_values(&labels),
            uncached_tokens: self.uncached_tokens.with_label_values(&labels),
            bytes: self.bytes.with_label_values(&labels),
            entries: self.entries.with_label_values(&labels),
        }
    }

    pub(super) fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let collectors: [&dyn Collector; 6] =
            [&self.hits, &self.misses, &self.cached_tokens, &self.uncached_tokens, &self.bytes, &self.entries];
        collectors.iter().flat_map(|collector| collector.collect()).collect()
    }
}
