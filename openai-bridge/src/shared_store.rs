//! `--responses-store redis://…`: the Responses API's stored responses in a Redis server that
//! several frontends share, so a `previous_response_id` made on one replica continues on any
//! other. Each response is one key (`tritium:responses:v1:{id}`) holding its conversation and
//! response as JSON, set with the store's time to live. One multiplexed connection, made at first
//! use and again after a failure; every call is bounded by a timeout, and a failure is the
//! request's error (a conversation that cannot be read is not silently a new one).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::Mutex;

const KEY_PREFIX: &str = "tritium:responses:v1:";
/// How long connecting, and each command, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis server holding stored responses.
pub struct RedisResponses {
    client: Client,
    /// The address, for errors (never the password).
    target: String,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisResponses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisResponses").field("target", &self.target).finish_non_exhaustive()
    }
}

impl RedisResponses {
    /// The store at `url` (`redis://[user:password@]host[:port][/db]`); nothing is connected
    /// until the first call.
    pub fn new(url: &str) -> Result<RedisResponses, String> {
        let client = Client::open(url).map_err(|e| format!("--responses-store: not a Redis URL ({:?})", e.kind()))?;
        let info = client.get_connection_info();
        let target = format!("{:?}", info.addr()).replace('"', "");
        Ok(RedisResponses { client, target, connection: Mutex::new(None) })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut connection = self.connection.lock().await;
        if let Some(open) = connection.as_ref() {
            return Ok(open.clone());
        }
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
        let made = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("the responses store at {} cannot be reached: {:?}", self.target, e.kind()))?;
        *connection = Some(made.clone());
        Ok(made)
    }

    /// Runs `command`; a failure drops the connection, so the next call makes a new one.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, String> {
        let mut connection = self.connection().await?;
        match command.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                *self.connection.lock().await = None;
                Err(format!("the responses store at {} failed: {:?}", self.target, error.kind()))
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        self.run(redis::cmd("GET").arg(format!("{KEY_PREFIX}{id}")).clone()).await
    }

    pub async fn put(&self, id: &str, value: Vec<u8>, ttl: Duration) -> Result<(), String> {
        let command = redis::cmd("SET").arg(format!("{KEY_PREFIX}{id}")).arg(value).arg("EX").arg(ttl.as_secs().max(1)).clone();
        self.run(command).await
    }

    /// Whether a response was stored under `id`.
    pub async fn delete(&self, id: &str) -> Result<bool, String> {
        let removed: i64 = self.run(redis::cmd("DEL").arg(format!("{KEY_PREFIX}{id}")).clone()).await?;
        Ok(removed > 0)
    }
}

/// A shared store as settings hold it: equal when it is the same store.
#[derive(Debug, Clone)]
pub struct SharedStore(pub std::sync::Arc<RedisResponses>);

impl PartialEq for SharedStore {
    fn eq(&self, other: &SharedStore) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedStore {}
