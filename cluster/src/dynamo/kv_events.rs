//! Dynamo workers' KV events, read into the router's index: the `kv-events` topic of Dynamo's
//! event plane (ZeroMQ publishers its records advertise, or NATS subjects
//! `namespace.{ns}.component.{c}.endpoint.{e}.kv-events`), each message a msgpack envelope whose
//! payload is a msgpack list of router events. Blocks are named by Dynamo's own hashes, so the
//! router hashes prompts for Dynamo workers the same way ([`block_hashes`]).

use rmpv::ValueRef;
use tritium_backend_api::kv::{BlockHash, KvEvent};

use super::TESTED_VERSION;

/// The seed of Dynamo's block hashes (without a LoRA adapter or cache salt).
const HASH_SEED: u64 = 1337;
/// The ZeroMQ frame version Dynamo 1.4 to 1.6.1 write.
const FRAME_VERSION: u8 = 1;
/// A larger envelope is refused undecoded.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// A prompt's chained block hashes as Dynamo names blocks: each full block's tokens (u32,
/// little-endian) hashed with xxh3 and seed 1337; the first block's name is that hash, each
/// later one the xxh3 of its parent's name and its own tokens' hash.
pub fn block_hashes(tokens: &[u32], block_size: usize, lora: Option<&str>) -> Vec<BlockHash> {
    // A LoRA adapter's blocks are named apart from the base model's: Dynamo's router adds the
    // adapter name's xxh3 to the seed of each block's own hash (the chain keeps the plain seed).
    let seed = match lora.filter(|name| !name.is_empty()) {
        Some(name) => HASH_SEED.wrapping_add(xxhash_rust::xxh3::xxh3_64(name.as_bytes())),
        None => HASH_SEED,
    };
    let bytes = le_bytes(tokens);
    let mut parent: Option<u64> = None;
    bytes
        // A worker's record names the block size: a huge one must not wrap to a zero chunk.
        .chunks_exact(block_size.max(1).saturating_mul(4))
        .map(|block| {
            let tokens_hash = xxhash_rust::xxh3::xxh3_64_with_seed(block, seed);
            let name = match parent {
                None => tokens_hash,
                Some(parent) => {
                    let mut pair = [0u8; 16];
                    pair[..8].copy_from_slice(&parent.to_le_bytes());
                    pair[8..].copy_from_slice(&tokens_hash.to_le_bytes());
                    xxhash_rust::xxh3::xxh3_64_with_seed(&pair, HASH_SEED)
                }
            };
            parent = Some(name);
            name
        })
        .collect()
}

/// One block's own hash (Dynamo's `tokens_hash`): xxh3 of its tokens as little-endian u32s.
pub fn tokens_hash(block: &[u32]) -> u64 {
    tokens_hash_with(block, HASH_SEED)
}

fn tokens_hash_with(block: &[u32], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&le_bytes(block), seed)
}

/// Tokens as the little-endian bytes Dynamo hashes: on a little-endian machine their own memory
/// (an agent's prompt is ~100 KB of ids, copied on every turn before), else a copy.
fn le_bytes(tokens: &[u32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(tokens))
    } else {
        std::borrow::Cow::Owned(tokens.iter().flat_map(|token| token.to_le_bytes()).collect())
    }
}

/// The envelope inside a ZeroMQ message `[topic, publisher id, sequence, version | length | envelope]`.
pub fn zmq_envelope(frames: &[&[u8]]) -> Result<Option<Vec<u8>>, String> {
    let [topic, _publisher, _sequence, framed] = frames else {
        return Err(format!("a Dynamo event message has {} frames; Dynamo {TESTED_VERSION} sends 4", frames.len()));
    };
    if *topic != b"kv-events" {
        return Ok(None);
    }
    let Some((&version, rest)) = framed.split_first() else { return Err("an empty Dynamo event frame".into()) };
    if version != FRAME_VERSION {
        return Err(format!("a Dynamo event frame of version {version}; Dynamo {TESTED_VERSION} writes version {FRAME_VERSION}"));
    }
    let (length, envelope) = rest.split_at_checked(4).ok_or("a truncated Dynamo event frame")?;
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    if length != envelope.len() || length > MAX_EVENT_BYTES {
        return Err(format!("a Dynamo event frame says {length} bytes and holds {}", envelope.len()));
    }
    Ok(Some(envelope.to_vec()))
}

/// The router events of one envelope (`{publisher_id, sequence, published_at, topic, payload}`):
/// each worker's events, in order.
pub fn router_events(envelope: &[u8]) -> Result<Vec<(u64, KvEvent)>, String> {
    if envelope.len() > MAX_EVENT_BYTES {
        return Err(format!("a Dynamo event envelope of {} bytes is over the {MAX_EVENT_BYTES} allowed", envelope.len()));
    }
    let not_one = |what: &str| format!("a Dynamo {what} is not one Dynamo {TESTED_VERSION} writes");
    // Read in place: the field names and the payload are borrowed from the envelope, not copied
    // (an event per request, each block a map of named fields).
    let envelope = rmpv::decode::read_value_ref(&mut &envelope[..]).map_err(|_| not_one("event envelope"))?;
    let payload = field(&envelope, "payload").ok_or_else(|| not_one("event envelope"))?;
    let &ValueRef::Binary(payload) = payload else { return Err(not_one("event envelope")) };
    let events = rmpv::decode::read_value_ref(&mut &payload[..]).map_err(|_| not_one("KV event list"))?;
    let ValueRef::Array(events) = events else { return Err(not_one("KV event list")) };
    events
        .iter()
        .map(|event| {
            let worker = field(event, "worker_id").and_then(ValueRef::as_u64).ok_or_else(|| not_one("KV event"))?;
            let data = field(event, "event").and_then(|e| field(e, "data")).ok_or_else(|| not_one("KV event"))?;
            Ok((worker, kv_event(data).ok_or_else(|| not_one("KV event"))?))
        })
        .collect()
}

/// `{"stored": {parent_hash, blocks: [{block_hash, …}]}}`, `{"removed": {block_hashes}}` or `"cleared"`.
fn kv_event(data: &ValueRef) -> Option<KvEvent> {
    if text(data) == Some("cleared") {
        return Some(KvEvent::Cleared);
    }
    if let Some(stored) = field(data, "stored") {
        let parent = field(stored, "parent_hash").and_then(ValueRef::as_u64);
        let ValueRef::Array(blocks) = field(stored, "blocks")? else { return None };
        let blocks = blocks.iter().map(|b| field(b, "block_hash").and_then(ValueRef::as_u64)).collect::<Option<Vec<_>>>()?;
        return Some(KvEvent::Stored { parent, blocks });
    }
    if let Some(removed) = field(data, "removed") {
        let ValueRef::Array(hashes) = field(removed, "block_hashes")? else { return None };
        return Some(KvEvent::Removed { blocks: hashes.iter().map(ValueRef::as_u64).collect::<Option<Vec<_>>>()? });
    }
    if field(data, "cleared").is_some() {
        return Some(KvEvent::Cleared);
    }
    None
}

fn field<'a, 'b>(map: &'a ValueRef<'b>, name: &str) -> Option<&'a ValueRef<'b>> {
    match map {
        ValueRef::Map(entries) => entries.iter().find(|(key, _)| text(key) == Some(name)).map(|(_, value)| value),
        _ => None,
    }
}

fn text<'r>(value: &'r ValueRef<'_>) -> Option<&'r str> {
    match value {
        ValueRef::String(text) => text.as_str(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rmpv::Value;

    use super::*;

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
    }

    fn encode(value: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).unwrap();
        bytes
    }

    #[test]
    fn an_adapters_blocks_are_named_as_dynamos_router_names_them() {
        // From Dynamo 1.6.1's own binding: `dynamo.llm.compute_block_hash_for_seq(list(range(1, 33)), 16)`
        // and the same with `lora_name="ad1"` (each block's own hash).
        let tokens: Vec<u32> = (1..33).collect();
        assert_eq!(block_hashes(&tokens, 16, None)[0], 16863443419780771464);
        assert_eq!(block_hashes(&tokens, 16, Some("ad1"))[0], 4041546345794348948);
        assert_eq!(block_hashes(&tokens, 16, Some("")), block_hashes(&tokens, 16, None), "an empty name is no adapter");
        let seed = HASH_SEED.wrapping_add(xxhash_rust::xxh3::xxh3_64(b"ad1"));
        assert_eq!(tokens_hash_with(&tokens[16..], seed), 15495134762728542713);
    }

    #[test]
    fn hashes_match_the_mockers_stored_blocks() {
        // tokens_hash of a block is its own name when first; a second block chains from it.
        let tokens: Vec<u32> = (0..128).collect();
        let hashes = block_hashes(&tokens, 64, None);
        assert_eq!(hashes.len(), 2);
        let first = xxhash_rust::xxh3::xxh3_64_with_seed(&(0..64u32).flat_map(u32::to_le_bytes).collect::<Vec<u8>>(), HASH_SEED);
        assert_eq!(hashes[0], first);
        assert_ne!(hashes[1], first);
        assert_eq!(block_hashes(&tokens[..127], 64, None).len(), 1);
        assert!(block_hashes(&tokens, usize::MAX / 2, None).is_empty(), "a block size a record could name");
    }

    #[test]
    fn envelopes_decode_into_kv_events_and_foreign_frames_are_refused() {
        let events = Value::Array(vec![
            map(vec![
                ("worker_id", Value::from(17718393618540674277u64)),
                ("storage_tier", Value::from("device")),
                (
                    "event",
                    map(vec![
                        ("event_id", Value::from(1)),
                        (
                            "data",
                            map(vec![(
                                "stored",
                                map(vec![
                                    ("parent_hash", Value::Nil),
                                    (
                                        "blocks",
                                        Value::Array(vec![map(vec![
                                            ("block_hash", Value::from(5u64)),
                                            ("tokens_hash", Value::from(5u64)),
                                        ])]),
                                    ),
                                ]),
                            )]),
                        ),
                    ]),
                ),
            ]),
            map(vec![("worker_id", Value::from(2u64)), ("event", map(vec![("data", Value::from("cleared"))]))]),
        ]);
        let envelope = map(vec![
            ("publisher_id", Value::from(1)),
            ("topic", Value::from("kv-events")),
            ("payload", Value::Binary(encode(&events))),
        ]);
        let bytes = encode(&envelope);
        let mut framed = vec![FRAME_VERSION];
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&bytes);
        let unwrapped = zmq_envelope(&[b"kv-events", &[0; 8], &[0; 8], &framed]).unwrap().unwrap();
        assert_eq!(
            router_events(&unwrapped).unwrap(),
            vec![(17718393618540674277, KvEvent::Stored { parent: None, blocks: vec![5] }), (2, KvEvent::Cleared)]
        );
        assert_eq!(zmq_envelope(&[b"kv_metrics", &[0; 8], &[0; 8], &framed]).unwrap(), None);
        framed[0] = 2;
        assert!(zmq_envelope(&[b"kv-events", &[0; 8], &[0; 8], &framed]).unwrap_err().contains(TESTED_VERSION));
        assert!(router_events(b"\xc1 not msgpack").unwrap_err().contains(TESTED_VERSION));
    }
}
