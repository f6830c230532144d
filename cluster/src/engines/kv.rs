//! An engine's KV events (`SubscribeKvEvents`) in Tritium's block names, for the KV-aware router.
//! Engines name blocks by their own hashes (vLLM: a SHA-256 chain); each stored block comes with
//! its tokens, so it is renamed here with Tritium's chained hash over the engine's block size,
//! which is how the router names a prompt's blocks for these engines. The engine's names are
//! kept per engine to follow removals; an engine may hold two copies of a block and remove them
//! one at a time, so the copies are counted. The stream is live only: when it breaks (or the
//! engine says it lost events), the engine's blocks are cleared and the subscription starts over.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::Channel;
use tritium_backend_api::kv::{BlockHash, KvEvent, chain_hash};
use tritium_proto::engine::vllm_engine_client::VllmEngineClient;
use tritium_proto::engine::{KvEventBatch, SubscribeKvEventsRequest, kv_cache_event};

/// Where an engine's KV events go: (worker id, model, event).
pub type KvSink = std::sync::Arc<dyn Fn(&str, &str, &KvEvent) + Send + Sync>;

/// Engine block names followed per engine; past this the engine's blocks are cleared and
/// followed afresh (a bound on what one engine's events may make this process hold).
pub const MAX_FOLLOWED_BLOCKS: usize = 1 << 20;

/// How long to wait before subscribing again after the stream broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// One engine's block names: the engine's hash -> (Tritium's hash, copies held).
#[derive(Debug, Default)]
pub struct BlockNames {
    names: HashMap<i64, (BlockHash, u32)>,
}

impl BlockNames {
    /// Tritium's events for one batch of the engine's (none for events that name nothing known).
    pub fn translate(&mut self, batch: &KvEventBatch) -> Vec<KvEvent> {
        let mut out = Vec::new();
        for event in &batch.events {
            match &event.data {
                Some(kv_cache_event::Data::Stored(stored)) => {
                    // Only the main attention group names prompt prefixes.
                    if stored.group_idx.unwrap_or(0) != 0 || stored.lora_name.as_deref().is_some_and(|n| !n.is_empty()) {
                        continue;
                    }
                    let parent = match stored.parent_block_hash {
                        None => None,
                        Some(hash) => match self.names.get(&hash) {
                            Some(&(ours, _)) => Some(ours),
                            // A chain whose start was never seen cannot be named.
                            None => continue,
                        },
                    };
                    if self.names.len() + stored.blocks.len() > MAX_FOLLOWED_BLOCKS {
                        self.names.clear();
                        out.push(KvEvent::Cleared);
                        continue;
                    }
                    let mut previous = parent.unwrap_or(0);
                    let mut blocks = Vec::with_capacity(stored.blocks.len());
                    for block in &stored.blocks {
                        previous = chain_hash(previous, &block.token_ids);
                        let entry = self.names.entry(block.block_hash).or_insert((previous, 0));
                        entry.0 = previous;
                        entry.1 = entry.1.saturating_add(1);
                        blocks.push(previous);
                    }
                    if !blocks.is_empty() {
                        out.push(KvEvent::Stored { parent, blocks });
                    }
                }
                Some(kv_cache_event::Data::Removed(removed)) => {
                    if removed.group_idx.unwrap_or(0) != 0 {
                        continue;
                    }
                    let mut blocks = Vec::new();
                    for hash in &removed.block_hashes {
                        let Some(entry) = self.names.get_mut(hash) else { continue };
                        entry.1 = entry.1.saturating_sub(1);
                        if entry.1 == 0 {
                            blocks.push(entry.0);
                            self.names.remove(hash);
                        }
                    }
                    if !blocks.is_empty() {
                        out.push(KvEvent::Removed { blocks });
                    }
                }
                Some(kv_cache_event::Data::Cleared(_)) => {
                    self.names.clear();
                    out.push(KvEvent::Cleared);
                }
                None => {}
            }
        }
        out
    }
}

/// Follows the KV events of the engine `worker` (serving `model`) on `channel` into `sink`
/// until `stop`. An engine that publishes none (UNIMPLEMENTED) is left alone.
pub async fn follow(
    channel: Channel,
    worker: String,
    model: String,
    max_message: usize,
    sink: KvSink,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut client = VllmEngineClient::new(channel).max_decoding_message_size(max_message);
    loop {
        let mut names = BlockNames::default();
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = tokio::time::timeout(super::CALL_TIMEOUT, client.subscribe_kv_events(SubscribeKvEventsRequest { start_sequence_number: 0 })) => subscribed,
        };
        match subscribed {
            Ok(Ok(stream)) => {
                let mut stream = stream.into_inner();
                loop {
                    let batch = tokio::select! {
                        () = stop.cancelled() => return,
                        batch = stream.message() => batch,
                    };
                    match batch {
                        Ok(Some(batch)) => {
                            for event in names.translate(&batch) {
                                sink(&worker, &model, &event);
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(engine = %worker, "the engine's KV events broke off: {}", status.message());
                            break;
                        }
                    }
                }
                // What the engine holds is unknown until the next events.
                sink(&worker, &model, &KvEvent::Cleared);
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(engine = %worker, "the engine publishes no KV events; the KV router scores it by its load");
                return;
            }
            Ok(Err(status)) => {
                tracing::debug!(engine = %worker, "subscribing to the engine's KV events failed: {}", status.message())
            }
            Err(_) => tracing::debug!(engine = %worker, "subscribing to the engine's KV events timed out"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tritium_backend_api::kv::block_hashes;
    use tritium_proto::engine::{KvBlock, KvBlocksRemoved, KvBlocksStored, KvCacheCleared, KvCacheEvent};

    use super::*;

    fn stored(parent: Option<i64>, blocks: &[(i64, Vec<u32>)]) -> KvCacheEvent {
        let blocks =
            blocks.iter().map(|(hash, tokens)| KvBlock { block_hash: *hash, token_ids: tokens.clone(), block_size: 2 }).collect();
        KvCacheEvent {
            event_id: 0,
            data: Some(kv_cache_event::Data::Stored(KvBlocksStored {
                blocks,
                parent_block_hash: parent,
                group_idx: None,
                lora_name: None,
            })),
        }
    }

    fn removed(hashes: &[i64]) -> KvCacheEvent {
        KvCacheEvent {
            event_id: 0,
            data: Some(kv_cache_event::Data::Removed(KvBlocksRemoved { block_hashes: hashes.to_vec(), group_idx: None })),
        }
    }

    fn batch(events: Vec<KvCacheEvent>) -> KvEventBatch {
        KvEventBatch { sequence_number: 1, events, dp_rank: None }
    }

    #[test]
    fn stored_blocks_are_named_as_the_router_names_a_prompt() {
        let mut names = BlockNames::default();
        let prompt = [1, 2, 3, 4, 5, 6];
        let ours = block_hashes(&prompt, 2);
        let first = names.translate(&batch(vec![stored(None, &[(-7, vec![1, 2]), (99, vec![3, 4])])]));
        assert_eq!(first, [KvEvent::Stored { parent: None, blocks: ours[..2].to_vec() }]);
        // A child of a known block chains on from it.
        let second = names.translate(&batch(vec![stored(Some(99), &[(5, vec![5, 6])])]));
        assert_eq!(second, [KvEvent::Stored { parent: Some(ours[1]), blocks: vec![ours[2]] }]);
        // A child of an unknown block cannot be named.
        assert!(names.translate(&batch(vec![stored(Some(12345), &[(6, vec![7, 8])])])).is_empty());
    }

    #[test]
    fn a_block_held_twice_is_removed_with_its_last_copy() {
        let mut names = BlockNames::default();
        let ours = block_hashes(&[1, 2], 2);
        names.translate(&batch(vec![stored(None, &[(3, vec![1, 2])]), stored(None, &[(3, vec![1, 2])])]));
        assert!(names.translate(&batch(vec![removed(&[3])])).is_empty());
        assert_eq!(names.translate(&batch(vec![removed(&[3, 404])])), [KvEvent::Removed { blocks: ours }]);
        let cleared = KvCacheEvent { event_id: 0, data: Some(kv_cache_event::Data::Cleared(KvCacheCleared {})) };
        assert_eq!(names.translate(&batch(vec![cleared])), [KvEvent::Cleared]);
    }
}
