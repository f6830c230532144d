//! API keys on every inference door: `--api-key KEY` (repeatable) and `--api-key-file PATH`
//! (re-read when it changes and on SIGHUP). A request names its key in `Authorization: Bearer
//! <key>` (OpenAI's clients, KServe over HTTP and gRPC, Triton's clients through their headers)
//! or `x-api-key` (Anthropic's clients). Keys are compared in constant time, every key each
//! time; a missing or wrong key gets the same answer ([`REFUSAL`]) before any model work. Only
//! the key's name is ever logged or counted, never the key.
//!
//! The key file holds one key per line, `NAME:KEY`, `NAME:KEY:OPTIONS` or a bare `KEY` (named
//! `key-<line>`); blank lines and lines starting with `#` are skipped. OPTIONS, comma-separated:
//! `rps=N` (at most N requests a second for that key; beyond, 429 with `Retry-After`, gRPC
//! `RESOURCE_EXHAUSTED`) and `models=A|B` (the only models the key may use; any other gets 403,
//! gRPC `PERMISSION_DENIED`, whether it exists or not, see [`KeyScope`]). A file that cannot be
//! read or parsed on a reload leaves the keys in force unchanged (logged without its contents).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use tokio_util::sync::CancellationToken;

/// The one answer to a missing or wrong key, whichever it was.
pub const REFUSAL: &str = "Invalid or missing API key";

/// The largest key file read, and the most keys it may hold.
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_KEYS: usize = 10_000;
/// How often the key file's modification time is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

struct Key {
    name: String,
    secret: Vec<u8>,
    /// `rps=N` in the key file: at most N requests a second (a bucket of N, refilled at N/s).
    rate: Option<Bucket>,
    /// `models=A|B` in the key file: the only models it may use.
    models: Option<Arc<[String]>>,
}

/// What a granted key may reach: its name, and the models it may use (`None`: every model).
/// The doors put it in the request's extensions; whatever names a model checks it there.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyScope {
    pub name: String,
    pub models: Option<Arc<[String]>>,
}

impl KeyScope {
    /// Whether the key may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|models| models.iter().any(|allowed| allowed == model))
    }

    /// Whether the key is held to a list of models.
    pub fn is_limited(&self) -> bool {
        self.models.is_some()
    }

    /// The refusal of `model` (the same whether the model exists or not).
    pub fn refusal(&self, model: &str) -> String {
        format!("API key '{}' may not use model '{model}'", self.name)
    }

    /// The refusal of a request that names no model, or one that reaches every model (a
    /// listing of all of them), by a key held to a list.
    pub fn needs_a_model(&self, what: &str) -> String {
        format!("API key '{}' may use only the models it names: {what} is refused", self.name)
    }
}

/// `Ok` when `scope` (the request's key, when keys are on) may use `model`.
pub fn check_model(scope: Option<&KeyScope>, model: &str) -> Result<(), String> {
    match scope {
        Some(scope) if !scope.allows(model) => Err(scope.refusal(model)),
        _ => Ok(()),
    }
}

struct Bucket {
    per_second: f64,
    /// Requests it holds when full: a second's worth, and at least one (a rate under one a
    /// second still lets a request through now and then).
    capacity: f64,
    /// Requests left, and when it was last refilled.
    state: parking_lot::Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_second: f64) -> Bucket {
        let capacity = per_second.max(1.0);
        Bucket { per_second, capacity, state: parking_lot::Mutex::new((capacity, Instant::now())) }
    }

    /// Takes one request, or says how long until one is left.
    fn take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let (left, last) = *state;
        let left = (left + now.duration_since(last).as_secs_f64() * self.per_second).min(self.capacity);
        if left >= 1.0 {
            *state = (left - 1.0, now);
            return Ok(());
        }
        *state = (left, now);
        Err(Duration::from_secs_f64((1.0 - left) / self.per_second))
    }
}

/// What a request's key lets it do.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Served; the key's name and models.
    Granted(KeyScope),
    /// No key, or none that matches: [`REFUSAL`].
    Refused,
    /// The key's request rate is spent: try again after the duration.
    Limited { name: String, per_second: f64, retry_after: Duration },
}

impl Access {
    /// How long a limited key is to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Access::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The refusal's message for a client (the key's name, never the key).
    pub fn message(&self) -> String {
        match self {
            Access::Limited { name, per_second, retry_after } => format!(
                "API key '{name}' is over its {per_second} requests per second; retry after {:.3} s",
                retry_after.as_secs_f64()
            ),
            _ => REFUSAL.to_string(),
        }
    }
}

/// The keys in force.
pub struct ApiKeys {
    from_flags: Vec<Key>,
    file: Option<PathBuf>,
    from_file: ArcSwap<Vec<Key>>,
    /// `tritium_api_key_requests_total{key, outcome}`: by the key's name, never the key.
    requests: prometheus::IntCounterVec,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("ApiKeys").field("flags", &self.from_flags.len()).field("file", &self.file).finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// The keys of `--api-key` and `--api-key-file`; `None` when neither is given (the doors
    /// stay open). A key file that cannot be read stops the server at start.
    pub fn new(keys: &[String], file: Option<PathBuf>) -> Result<Option<Arc<ApiKeys>>, String> {
        if keys.is_empty() && file.is_none() {
            return Ok(None);
        }
        let from_flags = keys
            .iter()
            .enumerate()
            .map(|(i, key)| match key.trim() {
                "" => Err(format!("--api-key number {} is empty", i + 1)),
                key => Ok(Key { name: format!("flag-{}", i + 1), secret: key.as_bytes().to_vec(), rate: None, models: None }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let from_file = match &file {
            Some(path) => read_file(path)?,
            None => Vec::new(),
        };
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tritium_api_key_requests_total",
                "Requests checked for an API key, by the key's name (\"\" when none matched) and outcome (served, limited, refused)",
            ),
            &["key", "outcome"],
        )
        .map_err(|e| format!("the API key metric: {e}"))?;
        Ok(Some(Arc::new(ApiKeys { from_flags, file, from_file: ArcSwap::from_pointee(from_file), requests })))
    }

    /// The name of the key `presented` is, or `None` (absent, or no key in force matches).
    pub fn check(&self, presented: Option<&[u8]>) -> Option<String> {
        match self.admit(presented) {
            Access::Granted(KeyScope { name, .. }) | Access::Limited { name, .. } => Some(name),
            Access::Refused => None,
        }
    }

    /// Whether `presented` may be served now: its key's name, a refusal, or its rate spent.
    pub fn admit(&self, presented: Option<&[u8]>) -> Access {
        let presented = presented.unwrap_or_default();
        let file = self.from_file.load();
        let mut found: Option<&Key> = None;
        // Every key is compared, whatever matched before, so the time says nothing about which.
        for key in self.from_flags.iter().chain(file.iter()) {
            if constant_time_eq(&key.secret, presented) && !presented.is_empty() {
                found = found.or(Some(key));
            }
        }
        let Some(key) = found else {
            self.requests.with_label_values(&["", "refused"]).inc();
            return Access::Refused;
        };
        match key.rate.as_ref().map(Bucket::take) {
            Some(Err(retry_after)) => {
                self.requests.with_label_values(&[key.name.as_str(), "limited"]).inc();
                Access::Limited {
                    name: key.name.clone(),
                    per_second: key.rate.as_ref().map_or(0.0, |bucket| bucket.per_second),
                    retry_after,
                }
            }
            _ => {
                self.requests.with_label_values(&[key.name.as_str(), "served"]).inc();
                Access::Granted(KeyScope { name: key.name.clone(), models: key.models.clone() })
            }
        }
    }

    /// The requests counter, for the metrics port's registry.
    pub fn counter(&self) -> prometheus::IntCounterVec {
        self.requests.clone()
    }

    /// The key an HTTP request or gRPC call names, then [`ApiKeys::admit`].
    pub fn admit_headers(&self, headers: &HeaderMap) -> Access {
        self.admit(presented(headers))
    }

    /// The key an HTTP request or gRPC call names, then [`ApiKeys::check`].
    pub fn check_headers(&self, headers: &HeaderMap) -> Option<String> {
        self.check(presented(headers))
    }

    /// Re-reads the key file; the keys in force stay when it cannot be read.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.file else { return Ok(0) };
        let keys = read_file(path)?;
        let count = keys.len();
        self.from_file.store(Arc::new(keys));
        Ok(count)
    }

    /// Re-reads the key file whenever its modification time changes and on SIGHUP, until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.file.clone() else { return };
        let keys = Arc::clone(self);
        tokio::spawn(async move {
            let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let mut seen: Option<SystemTime> = modified(&path);
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                let asked = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = signalled => true,
                    () = tokio::time::sleep(WATCH_EVERY) => false,
                };
                let now = modified(&path);
                if !asked && now == seen {
                    continue;
                }
                seen = now;
                match keys.reload() {
                    Ok(count) => tracing::info!(file = %path.display(), keys = count, "API key file re-read"),
                    Err(e) => tracing::warn!("{e}; the keys in force are kept"),
                }
            }
        });
    }
}

/// `Authorization: Bearer <key>`, else `x-api-key: <key>`.
pub fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.as_bytes();
        return match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => Some(value[7..].trim_ascii()),
            _ => None,
        };
    }
    headers.get("x-api-key").map(|value| value.as_bytes().trim_ascii())
}

/// Equality of `a` and `b` in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let longest = a.len().max(b.len());
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..longest {
        difference |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

fn read_file(path: &PathBuf) -> Result<Vec<Key>, String> {
    let shown = path.display();
    let size = std::fs::metadata(path).map_err(|e| format!("the API key file {shown} cannot be read: {}", e.kind()))?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("the API key file {shown} is {size} bytes, over the {MAX_FILE_BYTES} allowed"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("the API key file {shown} cannot be read: {}", e.kind()))?;
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The line's text is never echoed: it may hold a secret.
        let bad = || format!("the API key file {shown}: line {number} is not NAME:KEY[:rps=N,models=A|B] or KEY");
        let mut parts = line.splitn(3, ':').map(str::trim);
        let (name, secret, options) = match (parts.next(), parts.next(), parts.next()) {
            (Some(secret), None, _) => (format!("key-{number}"), secret, None),
            (Some(name), Some(secret), options) => (name.to_string(), secret, options),
            (None, _, _) => return Err(bad()),
        };
        if secret.is_empty() || secret.chars().any(char::is_whitespace) || name.is_empty() {
            return Err(bad());
        }
        let (mut rate, mut models) = (None, None);
        for option in options.into_iter().flat_map(|options| options.split(',')).map(str::trim) {
            if let Some(per_second) = option.strip_prefix("rps=") {
                match per_second.parse::<f64>() {
                    Ok(per_second) if per_second.is_finite() && per_second > 0.0 && rate.is_none() => {
                        rate = Some(Bucket::new(per_second));
                    }
                    _ => return Err(bad()),
                }
            } else if let Some(names) = option.strip_prefix("models=") {
                let names: Vec<String> = names.split('|').map(|name| name.trim().to_string()).collect();
                if models.is_some() || names.iter().any(String::is_empty) {
                    return Err(bad());
                }
                models = Some(Arc::from(names));
            } else {
                return Err(bad());
            }
        }
        keys.push(Key { name, secret: secret.as_bytes().to_vec(), rate, models });
        if keys.len() > MAX_KEYS {
            return Err(format!("the API key file {shown} holds more than {MAX_KEYS} keys"));
        }
    }
    Ok(keys)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn granted(name: &str) -> Access {
        Access::Granted(KeyScope { name: name.into(), models: None })
    }

    #[test]
    fn a_key_may_be_held_to_a_list_of_models() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "team:k-team:models=llama|qwen:7b\nboth:k-both:rps=5,models=bert\nall:k-all\n").unwrap();
        let keys = ApiKeys::new(&[], Some(path.clone())).unwrap().unwrap();
        let Access::Granted(team) = keys.admit(Some(b"k-team")) else { panic!("granted") };
        assert!(team.is_limited() && team.allows("llama") && team.allows("qwen:7b") && !team.allows("bert"));
        assert_eq!(check_model(Some(&team), "bert").unwrap_err(), "API key 'team' may not use model 'bert'");
        let Access::Granted(both) = keys.admit(Some(b"k-both")) else { panic!("granted") };
        assert!(both.allows("bert") && !both.allows("llama"));
        let Access::Granted(all) = keys.admit(Some(b"k-all")) else { panic!("granted") };
        assert!(!all.is_limited() && all.allows("anything"));
        assert!(check_model(None, "anything").is_ok(), "no keys: every model");
        for bad in ["t:k:models=", "t:k:models=a||b", "t:k:rps=1,rps=2", "t:k:colour=red", "t:k:models=a,models=b"] {
            std::fs::write(&path, format!("{bad}\n")).unwrap();
            assert!(keys.reload().unwrap_err().contains("line 1"), "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_key_is_named_and_a_wrong_or_missing_one_is_not() {
        let keys = ApiKeys::new(&["s3cret".into(), "other".into()], None).unwrap().unwrap();
        assert_eq!(keys.check_headers(&headers(&[("authorization", "Bearer s3cret")])).as_deref(), Some("flag-1"));
        assert_eq!(keys.check_headers(&headers(&[("authorization", "bearer other")])).as_deref(), Some("flag-2"));
        assert_eq!(keys.check_headers(&headers(&[("x-api-key", "s3cret")])).as_deref(), Some("flag-1"));
        assert_eq!(keys.check_headers(&headers(&[("authorization", "Bearer s3cre")])), None);
        assert_eq!(keys.check_headers(&headers(&[("authorization", "Basic s3cret")])), None);
        assert_eq!(keys.check_headers(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(keys.check_headers(&HeaderMap::new()), None);
        assert!(ApiKeys::new(&[], None).unwrap().is_none(), "no keys: the doors stay open");
        assert!(ApiKeys::new(&[" ".into()], None).is_err());
    }

    #[test]
    fn the_key_file_is_read_reread_and_a_bad_one_keeps_the_keys_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# team keys\nalice:k-alice\n\nk-bare\n").unwrap();
        let keys = ApiKeys::new(&[], Some(path.clone())).unwrap().unwrap();
        assert_eq!(keys.check(Some(b"k-alice")).as_deref(), Some("alice"));
        assert_eq!(keys.check(Some(b"k-bare")).as_deref(), Some("key-4"));
        std::fs::write(&path, "bob:k-bob\n").unwrap();
        assert_eq!(keys.reload().unwrap(), 1);
        assert_eq!(keys.check(Some(b"k-alice")), None, "a key taken out of the file is refused");
        std::fs::write(&path, "carol:two words\n").unwrap();
        let error = keys.reload().unwrap_err();
        assert!(error.contains("line 1") && !error.contains("two words"), "{error}");
        assert_eq!(keys.check(Some(b"k-bob")).as_deref(), Some("bob"), "the keys in force stay");
        assert!(ApiKeys::new(&[], Some(dir.path().join("absent"))).unwrap_err().contains("cannot be read"));
    }

    #[test]
    fn a_keys_rate_is_a_bucket_of_its_requests_per_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "slow:k-slow:rps=2\nfast:k-fast\n").unwrap();
        let keys = ApiKeys::new(&[], Some(path.clone())).unwrap().unwrap();
        assert_eq!(keys.admit(Some(b"k-slow")), granted("slow"));
        assert_eq!(keys.admit(Some(b"k-slow")), granted("slow"));
        let Access::Limited { name, retry_after, .. } = keys.admit(Some(b"k-slow")) else {
            panic!("a third request in a moment")
        };
        assert!(name == "slow" && retry_after <= Duration::from_millis(500), "{retry_after:?}");
        assert!(keys.admit(Some(b"k-slow")).message().contains("'slow' is over its 2 requests per second"));
        assert_eq!(keys.admit(Some(b"k-fast")), granted("fast"), "another key is not held back");
        let slower = ApiKeys::new(&[], Some(path.clone())).unwrap().unwrap();
        std::fs::write(&path, "rare:k-rare:rps=0.5\n").unwrap();
        slower.reload().unwrap();
        assert_eq!(slower.admit(Some(b"k-rare")), granted("rare"), "under one a second still admits");
        assert!(
            matches!(slower.admit(Some(b"k-rare")), Access::Limited { retry_after, .. } if retry_after > Duration::from_secs(1))
        );
        std::fs::write(&path, "slow:k-slow:rps=zero\n").unwrap();
        assert!(keys.reload().unwrap_err().contains("line 1"));
    }

    #[test]
    fn equality_is_exact_whatever_the_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
