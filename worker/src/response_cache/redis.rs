//! `--cache-config redis,host=H,port=P[,user=U][,password=W][,db=N][,connect_timeout=MS][,socket_timeout=MS]`:
//! responses kept in a Redis server that several Tritium processes share (Triton's redis cache
//! keys). One multiplexed connection, made at the first request and again after a failure. A
//! Redis that is down or slow never fails a request: the request runs uncached (a miss), the
//! first failure is logged as a warning (later ones at debug until it works again), and no new
//! connection is tried for a second after a failure, so a dead Redis costs a request nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use tritium_tensor::Tensor;

use super::{CacheKey, ResponseCache, decode_outputs, encode_outputs};

/// Redis keys are this prefix and the request key's hex digest.
const KEY_PREFIX: &str = "tritium:response-cache:v1:";
/// Redis's largest value (`proto-max-bulk-len`'s default): a response larger is not stored.
const MAX_VALUE: usize = 512 << 20;
/// How long after a failure requests skip Redis before one tries to connect again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where the Redis is and how to talk to it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// None: wait as long as the system does (Triton's 0).
    pub connect_timeout: Option<Duration>,
    pub socket_timeout: Option<Duration>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log.
        f.debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("socket_timeout", &self.socket_timeout)
            .finish()
    }
}

#[derive(Default)]
struct State {
    connection: Option<MultiplexedConnection>,
    /// Set after a failure: no new connection before then.
    retry_at: Option<Instant>,
    connecting: bool,
}

/// A response cache in a Redis server.
pub struct RedisCache {
    client: Client,
    config: AsyncConnectionConfig,
    target: String,
    state: Mutex<State>,
    /// Whether the last failure has been logged as a warning; reset once Redis answers.
    warned: AtomicBool,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("target", &self.target).finish()
    }
}

impl RedisCache {
    /// A cache in the Redis `settings` name; nothing is connected until the first request.
    pub fn new(settings: &RedisSettings) -> Result<RedisCache, String> {
        let mut redis = RedisConnectionInfo::default().set_db(settings.db);
        if let Some(user) = &settings.user {
            redis = redis.set_username(user);
        }
        if let Some(password) = &settings.password {
            redis = redis.set_password(password);
        }
        let target = format!("{}:{}", settings.host, settings.port);
        let info = ConnectionAddr::Tcp(settings.host.clone(), settings.port)
            .into_connection_info()
            .map_err(|e| format!("invalid redis address {target}: {:?}", e.kind()))?
            .set_redis_settings(redis);
        let client = Client::open(info).map_err(|e| format!("invalid redis address {target}: {:?}", e.kind()))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(settings.connect_timeout)
            .set_response_timeout(settings.socket_timeout);
        Ok(RedisCache { client, config, target, state: Mutex::new(State::default()), warned: AtomicBool::new(false) })
    }

    /// The connection to use now: the open one, a new one if none is open and none is being
    /// made or was refused less than [`RETRY_AFTER`] ago, else none (the request misses).
    async fn connection(&self) -> Option<MultiplexedConnection> {
        {
            let mut state = self.state.lock();
            if let Some(connection) = &state.connection {
                return Some(connection.clone());
            }
            if state.connecting || state.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            state.connecting = true;
        }
        let made = self.client.get_multiplexed_async_connection_with_config(&self.config).await;
        let mut state = self.state.lock();
        state.connecting = false;
        match made {
            Ok(connection) => {
                state.connection = Some(connection.clone());
                Some(connection)
            }
            Err(error) => {
                state.retry_at = Some(Instant::now() + RETRY_AFTER);
                drop(state);
                self.failed("connect", &error);
                None
            }
        }
    }

    /// After `error`: a broken or slow connection is forgotten, so the next request after
    /// [`RETRY_AFTER`] makes a new one; an error Redis answered (out of memory, say) leaves it.
    fn drop_connection(&self, what: &str, error: &redis::RedisError) {
        let broken = error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout();
        if broken {
            let mut state = self.state.lock();
            state.connection = None;
            state.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
        self.failed(what, error);
    }

    fn failed(&self, what: &str, error: &redis::RedisError) {
        // The error's kind and text come from the client or the server, never the password.
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(target = %self.target, %what, error = %error, "redis response cache unavailable; requests run uncached");
        } else {
            tracing::debug!(target = %self.target, %what, error = %error, "redis response cache still unavailable");
        }
    }

    fn answered(&self) {
        if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(target = %self.target, "redis response cache answers again");
        }
    }
}

#[async_trait::async_trait]
impl ResponseCache for RedisCache {
    async fn lookup(&self, key: &CacheKey) -> Option<Arc<[Tensor]>> {
        let mut connection = self.connection().await?;
        let name = format!("{KEY_PREFIX}{}", key.hex());
        let value: Option<Vec<u8>> = match redis::cmd("GET").arg(&name).query_async(&mut connection).await {
            Ok(value) => value,
            Err(error) => {
                self.drop_connection("GET", &error);
                return None;
            }
        };
        self.answered();
        let outputs = decode_outputs(Bytes::from(value?));
        if outputs.is_none() {
            tracing::warn!(target = %self.target, key = %name, "redis response cache entry is not a cached response; ignored");
        }
        outputs
    }

    async fn insert(&self, key: &CacheKey, outputs: &[Tensor]) {
        let Some(mut connection) = self.connection().await else { return };
        let value = encode_outputs(outputs);
        if value.len() > MAX_VALUE {
            return;
        }
        let name = format!("{KEY_PREFIX}{}", key.hex());
        let stored: Result<(), _> = redis::cmd("SET").arg(&name).arg(value).query_async(&mut connection).await;
        match stored {
            Ok(()) => self.answered(),
            Err(error) => self.drop_connection("SET", &error),
        }
    }
}
