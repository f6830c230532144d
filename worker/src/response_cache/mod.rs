//! Triton's response cache: a model whose config says `response_cache { enable: true }` answers a
//! request it has answered before from the cache, without running it again.
//!
//! The server builds one cache from `--cache-config` ([`LocalCache`]: a byte-bounded store in
//! this process; [`RedisCache`]: a Redis server several processes share) and hands it to the
//! registry, which gives it to each version that enables the cache. A request's key
//! ([`request_key`]) is a SHA-256 over everything that can change its answer: the model name and
//! version, each input's name, datatype, shape and bytes (inputs in name order), the custom
//! parameters the backend sees, and the outputs asked for. Nothing else is compared, so a
//! collision would need a SHA-256 collision. What is stored is the response's outputs; errors are
//! never stored. Requests of a sequence are never cached, and a model with a sequence batcher or a
//! decoupled model cannot enable the cache (Triton refuses both at load, with [`refusal`]'s words).
//!
//! ```
//! use tritium_tensor::Tensor;
//! use tritium_worker::response_cache::{LocalCache, ResponseCache, request_key};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let cache = LocalCache::new(1 << 20);
//! let input = Tensor::from_slice("INPUT0", vec![2], &[1f32, 2.0]);
//! let key = request_key("identity", 1, std::slice::from_ref(&input), &Default::default(), &[]);
//! assert!(cache.lookup(&key).await.is_none());
//! cache.insert(&key, &[input.clone()]).await;
//! assert_eq!(cache.lookup(&key).await.unwrap()[0].data, input.data);
//! # });
//! ```

mod codec;
mod local;
mod redis;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tritium_backend_api::request::{ParamValue, Parameters};
use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::Tensor;

use crate::params::RequestOptions;
pub use codec::{decode_outputs, encode_outputs};
pub use local::LocalCache;
pub use redis::{RedisCache, RedisSettings};

/// A request's identity in the cache: a SHA-256 digest (see [`request_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The digest in lowercase hex, as it is named in a shared store.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Where responses are kept. Neither call fails: a store that cannot answer is a miss, one that
/// cannot store drops the entry (and says so in the log, once).
#[async_trait::async_trait]
pub trait ResponseCache: Send + Sync + std::fmt::Debug {
    /// The outputs stored under `key`, if any.
    async fn lookup(&self, key: &CacheKey) -> Option<Arc<[Tensor]>>;
    /// Stores `outputs` under `key` (an entry larger than the store is not kept).
    async fn insert(&self, key: &CacheKey, outputs: &[Tensor]);
    /// Gauges of the store for the metrics page, when it keeps them.
    fn gauges(&self) -> Option<CacheGauges> {
        None
    }
}

/// What a store in this process can say about itself (Triton's `nv_cache_*` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheGauges {
    pub entries: u64,
    /// Bytes held over the bound, 0.0 to 1.0.
    pub utilization: f64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Request parameters that do not change the answer: scheduling, transport and sequence controls
/// (a request with a sequence is not cached at all: [`is_cacheable`]).
const NOT_IN_KEY: &[&str] = &[
    "priority",
    "timeout",
    "headers",
    "binary_data_output",
    "triton_enable_empty_final_response",
    "sequence_id",
    "sequence_start",
    "sequence_end",
];

/// Whether a request with `options` may be answered from, and stored in, the cache: not one of
/// a sequence.
pub fn is_cacheable(options: &RequestOptions) -> bool {
    options.sequence_id.is_none() && !options.sequence_start && !options.sequence_end
}

/// Triton's words for a model that enables the cache and cannot have it, or `None`.
pub fn refusal(config: &ModelConfig) -> Option<String> {
    if !config.response_cache.as_ref().is_some_and(|c| c.enable) {
        return None;
    }
    let name = &config.name;
    let decoupled = config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled);
    if decoupled {
        return Some(format!(
            "Response Cache does not currently support model {name} with 'decoupled' transaction policy. Please disable the response cache."
        ));
    }
    if matches!(config.scheduling_choice, Some(SchedulingChoice::SequenceBatching(_))) {
        return Some(format!(
            "Response Cache does not currently support model {name} with sequence batching scheduler. Please disable the response cache."
        ));
    }
    None
}

/// The key of a request to `model` version `version`; see the module docs for what it covers.
/// Every variable-length field is length-prefixed, so no two different requests hash the same
/// bytes.
pub fn request_key(
    model: &str,
    version: i64,
    inputs: &[Tensor],
    parameters: &Parameters,
    requested_outputs: &[String],
) -> CacheKey {
    let mut hash = Sha256::new();
    hash.update(b"tritium-response-cache-v1");
    text(&mut hash, model);
    hash.update(version.to_le_bytes());
    let mut ordered: Vec<&Tensor> = inputs.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    hash.update((ordered.len() as u64).to_le_bytes());
    for input in ordered {
        text(&mut hash, &input.name);
        text(&mut hash, input.datatype.kserve_name());
        hash.update((input.shape.len() as u64).to_le_bytes());
        for dim in &input.shape {
            hash.update(dim.to_le_bytes());
        }
        hash.update((input.data.len() as u64).to_le_bytes());
        hash.update(&input.data);
    }
    let mut params: Vec<&(String, ParamValue)> =
        parameters.iter().filter(|(key, _)| !NOT_IN_KEY.contains(&key.as_str())).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    hash.update((params.len() as u64).to_le_bytes());
    for (key, value) in params {
        text(&mut hash, key);
        match value {
            ParamValue::Bool(b) => hash.update([0, u8::from(*b)]),
            ParamValue::Int64(i) => {
                hash.update([1]);
                hash.update(i.to_le_bytes());
            }
            ParamValue::String(s) => {
                hash.update([2]);
                text(&mut hash, s);
            }
            ParamValue::Double(d) => {
                hash.update([3]);
                hash.update(d.to_bits().to_le_bytes());
            }
            ParamValue::Uint64(u) => {
                hash.update([4]);
                hash.update(u.to_le_bytes());
            }
        }
    }
    let mut outputs: Vec<&str> = requested_outputs.iter().map(String::as_str).collect();
    outputs.sort_unstable();
    outputs.dedup();
    hash.update((outputs.len() as u64).to_le_bytes());
    for output in outputs {
        text(&mut hash, output);
    }
    CacheKey(hash.finalize().into())
}

fn text(hash: &mut Sha256, s: &str) {
    hash.update((s.len() as u64).to_le_bytes());
    hash.update(s.as_bytes());
}

/// The bytes an entry of `outputs` is charged: its data, names and shapes, plus a fixed overhead
/// per tensor (the bound is on what the cache holds, not on data alone).
pub fn charged_bytes(outputs: &[Tensor]) -> u64 {
    const PER_TENSOR: u64 = 64;
    outputs.iter().map(|t| t.data.len() as u64 + t.name.len() as u64 + 8 * t.shape.len() as u64 + PER_TENSOR).sum::<u64>() + 32
}

#[cfg(test)]
mod tests;
