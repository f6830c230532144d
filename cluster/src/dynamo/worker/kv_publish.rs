//! A Tritium worker's KV events in Dynamo's format, for Dynamo's KV router (and Tritium's,
//! reading Dynamo's layout). The engine names blocks by Tritium's hashes; this publisher learns,
//! from each request's prompt, which Dynamo block (xxh3 chain) each Tritium block is, and
//! announces stored and removed blocks under Dynamo's names on a ZeroMQ PUB socket advertised by
//! an `EventChannel` record, in Dynamo's four-frame messages with msgpack envelopes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use rmpv::Value;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::kv::{BlockHash, KvEvent, block_hashes};
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::dynamo::kv_events;

/// Tritium block names learned from prompts, at most this many per model (oldest forgotten).
const MAX_KNOWN_BLOCKS: usize = 1 << 20;

/// Which Dynamo block each Tritium block of a model is: (Dynamo block hash, Dynamo tokens hash).
#[derive(Default)]
pub struct BlockNames {
    names: Mutex<HashMap<String, HashMap<BlockHash, (u64, u64)>>>,
}

impl BlockNames {
    /// Learns the blocks of a prompt about to run on `model`.
    pub fn learn(&self, model: &str, prompt: &[u32], block_size: usize) {
        let ours = block_hashes(prompt, block_size);
        let theirs = kv_events::block_hashes(prompt, block_size, None);
        let tokens = prompt.chunks_exact(block_size.max(1)).map(kv_events::tokens_hash);
        let mut names = self.names.lock();
        let known = names.entry(model.to_string()).or_default();
        if known.len() > MAX_KNOWN_BLOCKS {
            known.clear();
        }
        for ((ours, theirs), tokens) in ours.into_iter().zip(theirs).zip(tokens) {
            known.insert(ours, (theirs, tokens));
        }
    }

    fn name(&self, model: &str, block: BlockHash) -> Option<(u64, u64)> {
        self.names.lock().get(model)?.get(&block).copied()
    }
}

/// The PUB socket and what its messages need.
pub struct Publisher {
    socket: tokio::sync::Mutex<zeromq::PubSocket>,
    pub endpoint: String,
    pub publisher_id: u64,
    instance_id: u64,
    sequence: Mutex<(u64, u64)>,
}

impl Publisher {
    pub async fn bind(host: IpAddr, instance_id: u64) -> Result<Publisher, String> {
        let mut socket = zeromq::PubSocket::new();
        let host_text = match host {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        let bound =
            socket.bind(&format!("tcp://{host_text}:0")).await.map_err(|e| format!("binding the KV event socket: {e}"))?;
        Ok(Publisher {
            socket: tokio::sync::Mutex::new(socket),
            endpoint: bound.to_string(),
            publisher_id: rand::random::<u64>() >> 12,
            instance_id,
            sequence: Mutex::new((0, 0)),
        })
    }

    /// Announces one engine event of `model`, under Dynamo's block names.
    pub async fn publish(&self, names: &BlockNames, model: &str, event: &KvEvent) {
        let data = match event {
            KvEvent::Stored { parent, blocks } => {
                let blocks: Vec<Value> = blocks
                    .iter()
                    .filter_map(|block| names.name(model, *block))
                    .map(|(hash, tokens)| {
                        map(vec![("block_hash", hash.into()), ("tokens_hash", tokens.into()), ("mm_extra_info", Value::Nil)])
                    })
                    .collect();
                if blocks.is_empty() {
                    return;
                }
                let parent = parent.and_then(|p| names.name(model, p)).map_or(Value::Nil, |(hash, _)| hash.into());
                map(vec![(
                    "stored",
                    map(vec![("parent_hash", parent), ("start_position", Value::Nil), ("blocks", Value::Array(blocks))]),
                )])
            }
            KvEvent::Removed { blocks } => {
                let hashes: Vec<Value> =
                    blocks.iter().filter_map(|b| names.name(model, *b)).map(|(hash, _)| hash.into()).collect();
                if hashes.is_empty() {
                    return;
                }
                map(vec![("removed", map(vec![("block_hashes", Value::Array(hashes))]))])
            }
            KvEvent::Cleared => Value::from("cleared"),
            // Offload tiers are Tritium's own; Dynamo's router is not told.
            KvEvent::Offloaded { .. } | KvEvent::OffloadRemoved { .. } => return,
        };
        let (event_id, sequence) = {
            let mut counters = self.sequence.lock();
            counters.0 += 1;
            counters.1 += 1;
            *counters
        };
        let router_event = map(vec![
            ("worker_id", self.instance_id.into()),
            ("storage_tier", "device".into()),
            ("event", map(vec![("event_id", event_id.into()), ("data", data), ("dp_rank", 0.into())])),
            ("dp_rank", 0.into()),
        ]);
        let payload = encode(&Value::Array(vec![router_event]));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let envelope = encode(&map(vec![
            ("publisher_id", self.publisher_id.into()),
            ("sequence", sequence.into()),
            ("published_at", now.into()),
            ("topic", "kv-events".into()),
            ("payload", Value::Binary(payload)),
        ]));
        let mut framed = vec![1u8];
        framed.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
        framed.extend_from_slice(&envelope);
        let frames = vec![
            Bytes::from_static(b"kv-events"),
            Bytes::copy_from_slice(&self.publisher_id.to_be_bytes()),
            Bytes::copy_from_slice(&sequence.to_be_bytes()),
            Bytes::from(framed),
        ];
        let Ok(message) = ZmqMessage::try_from(frames) else { return };
        if let Err(e) = self.socket.lock().await.send(message).await {
            tracing::warn!("publishing a KV event in Dynamo's format failed: {e}");
        }
    }
}

/// Forwards the engine events of each `(model, events)` until `stop`.
pub fn forward(
    publisher: Arc<Publisher>,
    names: Arc<BlockNames>,
    engines: Vec<(String, tokio::sync::broadcast::Receiver<KvEvent>)>,
    stop: CancellationToken,
) {
    for (model, mut events) in engines {
        let (publisher, names, stop) = (Arc::clone(&publisher), Arc::clone(&names), stop.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.recv() => event,
                };
                let event = match event {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => KvEvent::Cleared,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                publisher.publish(&names, &model, &event).await;
            }
        });
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(key, value)| (Value::from(key), value)).collect())
}

fn encode(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut bytes, value);
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_blocks_go_out_under_dynamos_names_and_read_back() {
        let names = BlockNames::default();
        let prompt: Vec<u32> = (0..40).collect();
        names.learn("m", &prompt, 16);
        let ours = block_hashes(&prompt, 16);
        let theirs = kv_events::block_hashes(&prompt, 16, None);
        let publisher = Publisher::bind(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7).await.unwrap();
        let mut subscriber = zeromq::SubSocket::new();
        subscriber.subscribe("kv-events").await.unwrap();
        subscriber.connect(&publisher.endpoint).await.unwrap();
        let received = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            use zeromq::SocketRecv;
            loop {
                publisher.publish(&names, "m", &KvEvent::Stored { parent: None, blocks: ours.clone() }).await;
                if let Ok(Ok(message)) = tokio::time::timeout(std::time::Duration::from_millis(100), subscriber.recv()).await {
                    return message;
                }
            }
        })
        .await
        .unwrap();
        let frames: Vec<&[u8]> = received.iter().map(|frame| frame.as_ref()).collect();
        let envelope = kv_events::zmq_envelope(&frames).unwrap().unwrap();
        assert_eq!(kv_events::router_events(&envelope).unwrap(), vec![(7, KvEvent::Stored { parent: None, blocks: theirs })]);
    }
}
