//! Disaggregated prefill and decode, as the router sees it. Workers register as `agg`, `prefill`
//! or `decode`. While a model has prefill workers and workers that decode, language-model
//! requests go to the decode side (agg and decode workers), and a prompt whose part the chosen
//! decode worker lacks (by the KV index) is longer than `--max-local-prefill-length` is prefilled
//! on a prefill worker picked by the same policy (the KV router scores its cached prefix and
//! load). The decode worker pulls the blocks from it directly; when that fails, or the prefill
//! worker is full, the decode worker computes the prompt itself. Dynamo's disaggregated workers
//! (`worker_type` prefill and decode) go through the frontend: every prompt is sent to a prefill
//! worker first (one token), and its handoff (`prefill_result`) to the decode worker; a prefill
//! worker with a bootstrap rendezvous (SGLang's) hands over at once, its request still running.

use std::sync::Arc;

use tritium_backend_api::kv::block_hashes;
use tritium_backend_api::llm::{GenerateError, GenerateRequest, PrefillSource, TokenStream};
use tritium_worker::WorkerError;

use super::{Member, Router};
use crate::discovery::{DisaggregationMode, WorkerAddress};

/// How a model's workers split between prefill and decode.
#[derive(Debug, Default)]
pub(super) struct Split {
    /// The prefill workers, when the model also has workers that decode.
    pub prefill: Vec<Arc<str>>,
    /// The workers that decode (agg and decode), when the model has prefill workers.
    pub decode: Vec<Arc<str>>,
}

impl Split {
    pub(super) fn is_disaggregated(&self) -> bool {
        !self.prefill.is_empty()
    }
}

impl Router {
    /// Which of `model`'s workers prefill and which decode; both empty unless it has some of each
    /// (prefill workers alone serve everything, like agg ones).
    pub(super) fn split(&self, model: &str) -> Split {
        let table = self.table.load();
        let Some(route) = table.get(model) else { return Split::default() };
        // Most models have no prefill workers: nothing to allocate for them.
        if !route.iter().any(|m| m.mode == DisaggregationMode::Prefill) {
            return Split::default();
        }
        let (prefill, decode): (Vec<&Member>, Vec<&Member>) = route.iter().partition(|m| m.mode == DisaggregationMode::Prefill);
        if prefill.is_empty() || decode.is_empty() {
            return Split::default();
        }
        let ids = |members: Vec<&Member>| members.into_iter().map(|m| Arc::clone(&m.id)).collect();
        Split { prefill: ids(prefill), decode: ids(decode) }
    }

    /// With --no-decode-fallback: `model`'s decode workers while no prefill worker is up (they
    /// take none of its requests), or an error when nothing else serves it.
    pub(super) fn decode_without_prefill(&self, model: &str) -> Result<Vec<Arc<str>>, WorkerError> {
        if self.options.decode_fallback {
            return Ok(Vec::new());
        }
        let table = self.table.load();
        let Some(route) = table.get(model) else { return Ok(Vec::new()) };
        if route.iter().any(|m| m.mode == DisaggregationMode::Prefill) {
            return Ok(Vec::new());
        }
        let decode: Vec<Arc<str>> =
            route.iter().filter(|m| m.mode == DisaggregationMode::Decode).map(|m| Arc::clone(&m.id)).collect();
        if !decode.is_empty() && decode.len() == route.len() {
            return Err(WorkerError::Generate {
                model: model.to_string(),
                source: GenerateError::Unavailable {
                    model: model.to_string(),
                    message: "it has decode workers but no prefill worker is up (--no-decode-fallback); retry later".into(),
                },
            });
        }
        Ok(decode)
    }

    /// The prefill worker for `prompt` on its way to `decode`, and how the decode worker takes
    /// it over; `None` when the prompt is short enough, or what `decode` lacks of it is, to
    /// prefill there. A Dynamo decode worker's prompt is always prefilled on a Dynamo prefill
    /// worker, as Dynamo's frontend does. A Tritium worker's LoRA adapter (`model` one, or
    /// `adapter` named) is prefilled where it decodes: a prefill worker's blocks would be the
    /// base weights'.
    pub(super) fn prefill_for(
        &self,
        model: &str,
        adapter: Option<&str>,
        prompt: &[u32],
        decode: &Member,
        split: &Split,
    ) -> Option<(Member, Prefill)> {
        if decode.local || !split.is_disaggregated() {
            return None;
        }
        let is_dynamo = |id: &Arc<str>| matches!(self.members.lock().get(id), Some((_, WorkerAddress::Dynamo(_))));
        if is_dynamo(&decode.id) {
            let prefill = self.pick(model, Some(prompt), None, None, &split.decode, false).ok()??.member;
            return is_dynamo(&prefill.id).then_some((prefill, Prefill::Handoff));
        }
        if prompt.len() <= self.options.max_local_prefill_length {
            return None;
        }
        if adapter.is_some() || self.remote_models.tritium_adapter(model).is_some() {
            tracing::debug!(model, "a LoRA adapter's prompt is prefilled on its decode worker");
            return None;
        }
        let block_size = self.options.kv_block_size;
        let hashes = block_hashes(prompt, block_size);
        let held = self.kv.lock().overlaps(model, &hashes).get(decode.id.as_ref()).copied().unwrap_or(0);
        if prompt.len().saturating_sub(held * block_size) <= self.options.max_local_prefill_length {
            return None;
        }
        // Among the prefill workers only: every decoding worker counts as tried.
        let prefill = self.pick(model, Some(prompt), None, None, &split.decode, false).ok()??.member;
        let uri = match self.members.lock().get(&prefill.id) {
            Some((_, WorkerAddress::Grpc(uri))) => uri.clone(),
            _ => return None,
        };
        let source =
            PrefillSource { worker_id: prefill.id.to_string(), uri, first_block: u32::try_from(held).unwrap_or(u32::MAX) };
        Some((prefill, Prefill::Pull(source)))
    }
}

/// Runs `prefill`'s part of `request` and starts the decode on `decode` from its handoff (Dynamo's
/// workers); when the prefill fails, the decode worker is sent the request alone and computes the
/// prompt itself, as when a pull fails.
pub(super) async fn generate_after_handoff(
    model: &str,
    request: GenerateRequest,
    decode: &Member,
    prefill: &Member,
) -> Result<TokenStream, WorkerError> {
    let handoff = {
        let _prefilling = prefill.begin();
        prefill.client.prefill_handoff(model, &request).await
    };
    match handoff {
        Ok(handoff) => {
            let stream = decode.client.generate_from_handoff(model, request, handoff).await?;
            Ok(stream.prefilled_by(Some(Arc::clone(&prefill.id))))
        }
        Err(error) => {
            tracing::warn!(worker = %prefill.id, model, "prefilling failed ({error}); decoding without it");
            decode.client.generate(model, request).await
        }
    }
}

/// How a decode worker takes a prompt over from its prefill worker.
#[derive(Debug)]
pub(super) enum Prefill {
    /// It pulls the blocks from the prefill worker (Tritium's workers).
    Pull(PrefillSource),
    /// The frontend runs the prefill worker's part and hands what it returns to the decode
    /// worker, which moves the blocks itself (Dynamo's workers).
    Handoff,
}
