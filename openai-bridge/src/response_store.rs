//! Stored responses of the Responses API, for `previous_response_id` and
//! `GET /v1/responses/{id}`: bounded in count and bytes, each kept for a time to live, the
//! oldest dropped first. With a shared store (`--responses-store redis://…`) every response is
//! also written there, and one not held here is looked up there, so frontends behind one load
//! balancer continue each other's conversations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::shared_store::RedisResponses;

pub const DEFAULT_STORE_ENTRIES: usize = 10_000;
pub const DEFAULT_STORE_BYTES: usize = 256 << 20;
pub const DEFAULT_STORE_TTL: Duration = Duration::from_secs(3600);

/// The store's bounds (flags of `tritium serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_entries: usize,
    /// The JSON bytes of every stored conversation and response together.
    pub max_bytes: usize,
    pub ttl: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits { max_entries: DEFAULT_STORE_ENTRIES, max_bytes: DEFAULT_STORE_BYTES, ttl: DEFAULT_STORE_TTL }
    }
}

/// One stored response.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// The chat messages of the conversation so far, this response's turn included.
    pub conversation: Arc<Vec<Value>>,
    /// The response object as it was returned.
    pub response: Arc<Value>,
    /// The first response of the chain of `previous_response_id`s this one continues (`None`: it
    /// starts one): the conversation's key for the router's session affinity.
    pub chain: Option<Arc<str>>,
}

impl StoredResponse {
    /// The first response of the chain this one (stored as `id`) belongs to.
    pub fn chain_root(&self, id: &str) -> Arc<str> {
        self.chain.clone().unwrap_or_else(|| Arc::from(id))
    }
}

#[derive(Debug)]
struct Entry {
    stored: StoredResponse,
    bytes: usize,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids in the order they were stored (which is also the order they expire in).
    order: VecDeque<String>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub struct ResponseStore {
    limits: StoreLimits,
    inner: Mutex<Inner>,
    shared: Option<Arc<RedisResponses>>,
}

impl ResponseStore {
    pub fn new(limits: StoreLimits) -> ResponseStore {
        ResponseStore { limits, inner: Mutex::new(Inner::default()), shared: None }
    }

    /// The same store, writing through to `shared` and reading from it what it does not hold.
    pub fn with_shared(self, shared: Arc<RedisResponses>) -> ResponseStore {
        ResponseStore { shared: Some(shared), ..self }
    }

    /// A response stored here or in the shared store; an error when the shared store cannot be
    /// read (a conversation must not silently start over).
    pub async fn fetch(&self, id: &str) -> Result<Option<StoredResponse>, String> {
        if let Some(stored) = self.get(id) {
            return Ok(Some(stored));
        }
        let Some(shared) = &self.shared else { return Ok(None) };
        let Some(bytes) = shared.get(id).await? else { return Ok(None) };
        self.decode(id, &bytes).map(Some)
    }

    /// An entry that may change (a conversation): with a shared store, as it holds it (every
    /// frontend writes it there, and one deleted on another frontend is gone here too).
    pub async fn fetch_latest(&self, id: &str) -> Result<Option<StoredResponse>, String> {
        let Some(shared) = &self.shared else { return Ok(self.get(id)) };
        match shared.get(id).await? {
            Some(bytes) => self.decode(id, &bytes).map(Some),
            None => {
                self.remove(id);
                Ok(None)
            }
        }
    }

    /// A stored response as the shared store holds it.
    fn decode(&self, id: &str, bytes: &[u8]) -> Result<StoredResponse, String> {
        if bytes.len() > self.limits.max_bytes {
            return Err(format!("the stored response '{id}' is larger than --responses-store-bytes"));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("the stored response '{id}' is not JSON: {e}"))?;
        let (Some(Value::Array(conversation)), Some(response)) = (value.get("conversation").cloned(), value.get("response").cloned())
        else {
            return Err(format!("the stored response '{id}' is not one Tritium stores"));
        };
        let chain = value.get("chain").and_then(Value::as_str).map(Arc::from);
        Ok(StoredResponse { conversation: Arc::new(conversation), response: Arc::new(response), chain })
    }

    /// Removes a response here and from the shared store; whether either held it.
    pub async fn delete(&self, id: &str) -> Result<bool, String> {
        let here = self.remove(id);
        match &self.shared {
            Some(shared) => Ok(shared.delete(id).await? || here),
            None => Ok(here),
        }
    }

    /// Stores a response; one larger than the whole store is not kept (false).
    pub fn insert(&self, id: String, conversation: Vec<Value>, response: Value) -> bool {
        self.insert_in_chain(id, None, conversation, response)
    }

    /// [`ResponseStore::insert`] for a response that continues the chain `chain` started.
    pub fn insert_in_chain(&self, id: String, chain: Option<Arc<str>>, conversation: Vec<Value>, response: Value) -> bool {
        let bytes = json_len(&response)
            + conversation.iter().map(json_len).sum::<usize>()
            + id.len()
            + chain.as_ref().map_or(0, |chain| chain.len());
        if bytes > self.limits.max_bytes || self.limits.max_entries == 0 {
            return false;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.expire(now);
        while inner.order.len() >= self.limits.max_entries || inner.bytes + bytes > self.limits.max_bytes {
            if !inner.pop_oldest() {
                break;
            }
        }
        let stored = StoredResponse { conversation: Arc::new(conversation), response: Arc::new(response), chain };
        if let Some(old) = inner.entries.insert(id.clone(), Entry { stored, bytes, expires: now + self.limits.ttl }) {
            inner.bytes -= old.bytes;
            inner.order.retain(|other| other != &id);
        }
        inner.bytes += bytes;
        inner.order.push_back(id);
        true
    }

    /// Writes the response stored here under `id` to the shared store, if there is one (a
    /// failure is logged: this frontend still has it).
    pub async fn share(&self, id: &str) {
        let (Some(shared), Some(stored)) = (&self.shared, self.get(id)) else { return };
        let mut value = serde_json::json!({"conversation": stored.conversation.as_ref(), "response": stored.response.as_ref()});
        if let Some(chain) = &stored.chain {
            value["chain"] = Value::from(chain.as_ref());
        }
        if let Err(error) = shared.put(id, value.to_string().into_bytes(), self.limits.ttl).await {
            tracing::warn!(id, "{error}; the response is kept by this frontend only");
        }
    }

    pub fn get(&self, id: &str) -> Option<StoredResponse> {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now());
        inner.entries.get(id).map(|entry| entry.stored.clone())
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.inner.lock();
        match inner.entries.remove(id) {
            Some(entry) => {
                inner.bytes -= entry.bytes;
                inner.order.retain(|other| other != id);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some(id) = self.order.front() {
            match self.entries.get(id) {
                Some(entry) if entry.expires > now => return,
                _ => {
                    self.pop_oldest();
                }
            }
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some(id) = self.order.pop_front() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&id) {
            self.bytes -= entry.bytes;
        }
        true
    }
}

fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store(max_entries: usize, max_bytes: usize, ttl: Duration) -> ResponseStore {
        ResponseStore::new(StoreLimits { max_entries, max_bytes, ttl })
    }

    #[test]
    fn the_oldest_go_first_when_a_bound_is_reached() {
        let store = store(2, 1 << 20, DEFAULT_STORE_TTL);
        for id in ["a", "b", "c"] {
            assert!(store.insert(id.into(), vec![json!({"role": "user", "content": id})], json!({"id": id})));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none());
        assert_eq!(store.get("c").unwrap().response["id"], "c");

        let store = store_with_bytes(150);
        let big = "x".repeat(80);
        assert!(store.insert("a".into(), vec![json!(big)], json!({})));
        assert!(store.insert("b".into(), vec![json!(big)], json!({})));
        assert!(store.get("a").is_none(), "a went to make room for b");
        assert!(!store.insert("huge".into(), vec![json!("x".repeat(300))], json!({})), "larger than the store");
        assert!(store.get("b").is_some());
        assert!(store.remove("b") && !store.remove("b"));
        assert!(store.is_empty());
    }

    fn store_with_bytes(bytes: usize) -> ResponseStore {
        store(100, bytes, DEFAULT_STORE_TTL)
    }

    #[test]
    fn a_response_keeps_the_chain_it_continues_through_the_shared_form() {
        let store = store(10, 1 << 20, DEFAULT_STORE_TTL);
        assert!(store.insert("resp_a".into(), Vec::new(), json!({})));
        assert!(store.insert_in_chain("resp_b".into(), Some(Arc::from("resp_a")), Vec::new(), json!({})));
        assert_eq!(&*store.get("resp_a").unwrap().chain_root("resp_a"), "resp_a", "a chain's first response");
        assert_eq!(&*store.get("resp_b").unwrap().chain_root("resp_b"), "resp_a");
        let shared = json!({"conversation": [], "response": {}, "chain": "resp_a"}).to_string();
        assert_eq!(store.decode("resp_c", shared.as_bytes()).unwrap().chain.as_deref(), Some("resp_a"));
        let older = json!({"conversation": [], "response": {}}).to_string();
        assert_eq!(store.decode("resp_d", older.as_bytes()).unwrap().chain, None, "stored before chains were kept");
    }

    #[test]
    fn entries_expire() {
        let store = store(10, 1 << 20, Duration::from_millis(0));
        assert!(store.insert("a".into(), Vec::new(), json!({})));
        assert!(store.get("a").is_none());
        assert!(store.is_empty());
    }
}
