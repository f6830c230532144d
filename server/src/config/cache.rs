//! Triton's `--cache-config <cache>,<key>=<value>` (repeatable; several `key=value` pairs may
//! share one flag): the response cache the models with `response_cache { enable: true }` use.
//! `local,size=BYTES` keeps responses in this process; `redis,host=H,port=P` (with `user`,
//! `password`, `db`, `connect_timeout`, `socket_timeout` in milliseconds) in a Redis server
//! several servers share. See `tritium_worker::response_cache`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tritium_worker::response_cache::{LocalCache, RedisCache, RedisSettings, ResponseCache};

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Response cache")]
pub struct CacheArgs {
    /// A response-cache setting, `<cache>,<key>=<value>` (repeatable, or `;`-separated in the
    /// environment): `local,size=BYTES`, or `redis,host=H` and `redis,port=P` with optional
    /// `user`, `password`, `db`, `connect_timeout` and `socket_timeout` (milliseconds; 0 waits
    /// as long as the system does; default 2000).
    #[arg(long = "cache-config", env = "TRITIUM_CACHE_CONFIG", value_delimiter = ';', hide_env_values = true)]
    pub cache_config: Vec<String>,
}

/// The largest `local` cache: 1 TiB, far past any host's memory, so only a typo is refused.
const MAX_LOCAL_SIZE: u64 = 1 << 40;
const DEFAULT_REDIS_TIMEOUT_MS: u64 = 2000;
/// Bounds of the redis timeouts: an hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The cache `--cache-config` describes, before it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSettings {
    Local { size: u64 },
    Redis(RedisSettings),
}

impl CacheArgs {
    /// The server's response cache, or `None` without `--cache-config`.
    pub fn build(&self) -> Result<Option<Arc<dyn ResponseCache>>, String> {
        Ok(match self.settings()? {
            None => None,
            Some(CacheSettings::Local { size }) => Some(Arc::new(LocalCache::new(size))),
            Some(CacheSettings::Redis(settings)) => Some(Arc::new(RedisCache::new(&settings)?)),
        })
    }

    /// The settings the flags give, checked.
    pub fn settings(&self) -> Result<Option<CacheSettings>, String> {
        let mut name: Option<String> = None;
        let mut keys = BTreeMap::new();
        for option in self.cache_config.iter().filter(|o| !o.trim().is_empty()) {
            let (cache, pairs) = parse_option(option)?;
            if name.as_ref().is_some_and(|n| *n != cache) {
                return Err("found multiple cache configurations, but only a single cache is currently supported".into());
            }
            name = Some(cache);
            keys.extend(pairs);
        }
        match name.as_deref() {
            None => Ok(None),
            Some("local") => local(&keys).map(Some),
            Some("redis") => redis(&keys).map(Some),
            Some(other) => Err(format!("--cache-config names the cache '{other}'; the caches are 'local' and 'redis'")),
        }
    }
}

/// `<cache>,<key>=<value>[,<key>=<value>...]`: a piece without `=` belongs to the value before it
/// (a password may hold a comma). Triton's words when the form is wrong.
fn parse_option(option: &str) -> Result<(String, Vec<(String, String)>), String> {
    let form = || format!("--cache-config option format is '<cache name>,<setting>=<value>'. Got {}", redacted(option));
    let (cache, rest) = option.split_once(',').ok_or_else(form)?;
    if cache.is_empty() {
        return Err(format!("No cache specified. {}", form()));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in rest.split(',') {
        match piece.split_once('=') {
            Some((key, value)) if !key.is_empty() => pairs.push((key.to_string(), value.to_string())),
            _ => match pairs.last_mut() {
                Some((_, value)) => {
                    value.push(',');
                    value.push_str(piece);
                }
                None => return Err(form()),
            },
        }
    }
    Ok((cache.to_string(), pairs))
}

/// `option` with any password's value hidden, for error messages.
fn redacted(option: &str) -> String {
    match option.find("password=") {
        Some(at) => format!("{}password=<redacted>", &option[..at]),
        None => option.to_string(),
    }
}

fn unknown(cache: &str, key: &str, known: &str) -> String {
    format!("--cache-config {cache}: unknown setting '{key}' (settings: {known})")
}

fn number(cache: &str, key: &str, value: &str, max: u64) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("--cache-config {cache}: '{key}' must be a whole number from 0 to {max}, got '{value}'")),
    }
}

fn local(keys: &BTreeMap<String, String>) -> Result<CacheSettings, String> {
    let mut size = None;
    for (key, value) in keys {
        match key.as_str() {
            "size" => size = Some(number("local", key, value, MAX_LOCAL_SIZE)?),
            _ => return Err(unknown("local", key, "size")),
        }
    }
    match size {
        Some(size) if size > 0 => Ok(CacheSettings::Local { size }),
        Some(_) => Err("--cache-config local: 'size' must be at least 1 byte".into()),
        None => Err("--cache-config local: 'size' (bytes) is required, e.g. --cache-config local,size=1048576".into()),
    }
}

fn redis(keys: &BTreeMap<String, String>) -> Result<CacheSettings, String> {
    let timeout = |key: &str, value: &str| -> Result<Option<Duration>, String> {
        let ms = number("redis", key, value, MAX_TIMEOUT_MS)?;
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    };
    let default_timeout = Some(Duration::from_millis(DEFAULT_REDIS_TIMEOUT_MS));
    let mut settings = RedisSettings {
        host: String::new(),
        port: 0,
        user: None,
        password: None,
        db: 0,
        connect_timeout: default_timeout,
        socket_timeout: default_timeout,
    };
    let mut port = None;
    for (key, value) in keys {
        match key.as_str() {
            "host" => settings.host = value.trim().to_string(),
            "port" => port = Some(value),
            "user" => settings.user = Some(value.clone()).filter(|u| !u.is_empty()),
            "password" => settings.password = Some(value.clone()).filter(|p| !p.is_empty()),
            "db" => settings.db = number("redis", key, value, 1 << 16)? as i64,
            "connect_timeout" => settings.connect_timeout = timeout(key, value)?,
            "socket_timeout" => settings.socket_timeout = timeout(key, value)?,
            "pool_size" | "wait_timeout" => {
                return Err(format!(
                    "--cache-config redis: '{key}' is not supported: Tritium keeps one multiplexed connection to Redis"
                ));
            }
            _ => {
                return Err(unknown("redis", key, "host, port, user, password, db, connect_timeout, socket_timeout"));
            }
        }
    }
    if settings.host.is_empty() {
        return Err("--cache-config redis: 'host' is required, e.g. --cache-config redis,host=localhost".into());
    }
    settings.port = match port {
        Some(p) => p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("--cache-config redis: 'port' must be a port number from 1 to 65535, got '{p}'"))?,
        None => return Err("--cache-config redis: 'port' is required, e.g. --cache-config redis,port=6379".into()),
    };
    Ok(CacheSettings::Redis(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(options: &[&str]) -> Result<Option<CacheSettings>, String> {
        CacheArgs { cache_config: options.iter().map(|s| s.to_string()).collect() }.settings()
    }

    #[test]
    fn local_takes_a_size_in_bytes() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&["local,size=1048576"]), Ok(Some(CacheSettings::Local { size: 1 << 20 })));
        for bad in ["local,size=0", "local,size=-1", "local,size=1e6", "local,size=2000000000000", "local,colour=red", "local,x"]
        {
            assert!(settings(&[bad]).is_err(), "{bad}");
        }
        assert!(settings(&["local,size=1"]).is_ok());
    }

    #[test]
    fn redis_takes_tritons_keys_in_one_flag_or_several() {
        let one = settings(&["redis,host=127.0.0.1,port=6379,password=a"]).expect("valid");
        let Some(CacheSettings::Redis(one)) = one else { panic!("redis") };
        assert_eq!((one.host.as_str(), one.port, one.password.as_deref()), ("127.0.0.1", 6379, Some("a")));
        let several = settings(&["redis,host=h", "redis,port=7000", "redis,connect_timeout=0", "redis,password=p,w"]);
        let Ok(Some(CacheSettings::Redis(several))) = several else { panic!("redis: {several:?}") };
        assert_eq!((several.port, several.connect_timeout, several.password.as_deref()), (7000, None, Some("p,w")));
        assert_eq!(several.socket_timeout, Some(Duration::from_millis(DEFAULT_REDIS_TIMEOUT_MS)));
        for bad in [
            &["redis,port=6379"][..],
            &["redis,host=h"],
            &["redis,host=h,port=0"],
            &["redis,host=h,port=70000"],
            &["redis,host=h,port=1,pool_size=2"],
            &["redis,host=h,port=1,socket_timeout=99999999"],
        ] {
            assert!(settings(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dump_config_to_does_not_write_the_redis_password() {
        use clap::CommandFactory;
        let cli = crate::config::Cli::command();
        let args = ["tritium", "serve", "--cache-config", "redis,host=h,port=1,password=hunter2"];
        let matches = cli.clone().try_get_matches_from(args).expect("parses");
        let document = crate::config::dump::resolved_options(&cli, &matches);
        assert!(!document.to_string().contains("hunter2"), "{document}");
        assert_eq!(document["options"]["cache-config"]["source"], "command_line");
    }

    #[test]
    fn malformed_flags_get_tritons_words_and_hide_passwords() {
        let error = settings(&["local"]).expect_err("no setting");
        assert_eq!(error, "--cache-config option format is '<cache name>,<setting>=<value>'. Got local");
        assert!(settings(&[",size=1"]).expect_err("no cache").starts_with("No cache specified."));
        let two = settings(&["local,size=10", "redis,host=h"]).expect_err("two caches");
        assert_eq!(two, "found multiple cache configurations, but only a single cache is currently supported");
        let unknown = settings(&["memcached,size=1"]).expect_err("unknown cache");
        assert!(unknown.contains("'memcached'"), "{unknown}");
        let leaky = settings(&["redis,password=hunter2,host=h,port=x"]).expect_err("bad port");
        assert!(!leaky.contains("hunter2"), "{leaky}");
        let form = parse_option("redis,=x,password=hunter2").expect_err("no key");
        assert!(!form.contains("hunter2"), "{form}");
    }
}
