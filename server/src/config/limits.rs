//! The bounds on what a client can make the server hold, and the doors a client may open:
//! connections, streams, buffered request bytes, timeouts, shared memory, model loads and the
//! restricted protocols. Each has a flag, an environment variable and a default that keeps a
//! small box (2 cores, 2 GiB) serving under abuse; SECURITY.md lists them.

use std::time::Duration;

use clap::Args;
use tritium_openai_bridge::preprocess::{
    DEFAULT_MAX_TOKENIZING_BYTES, INLINE_BYTES, PreprocessLimits, TOKENIZE_BYTES_PER_INPUT_BYTE,
};
use tritium_openai_bridge::sampling::{
    CompletionLimits, DEFAULT_MAX_CHOICES, DEFAULT_MAX_PROMPTS, DEFAULT_MAX_STOP_STRING_BYTES, DEFAULT_MAX_STOP_STRINGS,
    DEFAULT_MAX_STOP_TOKEN_IDS,
};

use crate::restricted::RestrictedProtocols;
use crate::shm::{DEFAULT_MAX_REGIONS, MAX_REGIONS_LIMIT, ShmPolicy};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits and access")]
pub struct LimitArgs {
    /// Serve system shared memory (SystemSharedMemoryRegister maps a client-named /dev/shm key).
    /// Off by default: any client could otherwise map any segment the server's user can open.
    #[arg(long, env = "TRITIUM_ALLOW_SHARED_MEMORY")]
    pub allow_shared_memory: bool,
    /// Allow only shared-memory keys that start with this prefix (turns shared memory on).
    #[arg(long, env = "TRITIUM_SHM_KEY_PREFIX")]
    pub shm_key_prefix: Option<String>,
    /// Shared-memory regions registered at once, at most (each holds a mapping and a descriptor).
    #[arg(long, env = "TRITIUM_SHM_MAX_REGIONS", default_value_t = DEFAULT_MAX_REGIONS)]
    pub shm_max_regions: usize,
    /// gRPC connections open at once; further ones wait in the listen queue.
    #[arg(long, env = "TRITIUM_GRPC_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub grpc_max_connections: usize,
    /// Streams (calls) one HTTP/2 connection may have open at once; 0 for no limit.
    #[arg(long, env = "TRITIUM_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_STREAMS)]
    pub grpc_max_concurrent_streams: u32,
    /// Bytes of request messages the whole server may hold while they arrive (the bytes received of
    /// each message not yet complete, and inflated bytes of compressed ones); beyond it a call gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRITIUM_MAX_BUFFERED_REQUEST_BYTES", default_value_t = DEFAULT_BUFFERED_BYTES)]
    pub max_buffered_request_bytes: u64,
    /// Milliseconds a new connection has to finish the HTTP/2 handshake and send its first request
    /// headers; 0 disables.
    #[arg(long, env = "TRITIUM_GRPC_HEADER_TIMEOUT", default_value_t = 10_000)]
    pub grpc_header_timeout: u64,
    /// Milliseconds a connection may go without a byte in either direction while no unary call is
    /// running on it, before the server closes it; 0 disables.
    #[arg(long, env = "TRITIUM_GRPC_IDLE_TIMEOUT", default_value_t = 300_000)]
    pub grpc_idle_timeout: u64,
    /// Seconds a model load may take before the client is answered with an error (the load goes on
    /// in the background, and its model's next load waits for it).
    #[arg(long, env = "TRITIUM_MODEL_LOAD_TIMEOUT_SECS", default_value_t = 600)]
    pub model_load_timeout_secs: u64,
    /// Triton's `<protocols>:<header>=<value>`: calls of these protocol groups (comma-separated:
    /// health, metadata, inference, shared-memory, model-config, model-repository, statistics,
    /// trace, logging) must carry the header; repeatable.
    #[arg(long = "grpc-restricted-protocol", env = "TRITIUM_GRPC_RESTRICTED_PROTOCOL", value_delimiter = ';')]
    pub grpc_restricted_protocol: Vec<String>,
    /// Triton's `<apis>:<header>=<value>` for the HTTP port: requests of these API groups (the
    /// same names as --grpc-restricted-protocol) must carry the header; repeatable.
    #[arg(long = "http-restricted-api", env = "TRITIUM_HTTP_RESTRICTED_API", value_delimiter = ';')]
    pub http_restricted_api: Vec<String>,
    /// HTTP connections open at once; further ones wait in the listen queue.
    #[arg(long, env = "TRITIUM_HTTP_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub http_max_connections: usize,
    /// Bytes of one HTTP request body, at most, as sent and once inflated (413 beyond); Triton's
    /// --http-max-input-size. Bodies being received are also charged to
    /// --max-buffered-request-bytes.
    #[arg(long, visible_alias = "http-max-input-size", env = "TRITIUM_HTTP_MAX_BODY_BYTES", default_value_t = DEFAULT_HTTP_BODY_BYTES)]
    pub http_max_body_bytes: usize,
    /// Milliseconds an HTTP connection has to send a request's headers: the first after it opens,
    /// and on HTTP/1.1 each next one from when the previous response was sent (so an idle
    /// keep-alive connection is closed after it too); 0 disables.
    #[arg(long, env = "TRITIUM_HTTP_HEADER_TIMEOUT", default_value_t = 10_000)]
    pub http_header_timeout: u64,
    /// Milliseconds an HTTP connection may go without a byte in either direction while no request
    /// on it is being answered, before the server closes it, and a request body may go without a
    /// byte arriving before the request fails (408); 0 disables.
    #[arg(long, env = "TRITIUM_HTTP_IDLE_TIMEOUT", default_value_t = 300_000)]
    pub http_idle_timeout: u64,
    /// Stop strings one completion may give, at most (each is matched on every generated token).
    #[arg(long, env = "TRITIUM_LLM_MAX_STOP_STRINGS", default_value_t = DEFAULT_MAX_STOP_STRINGS)]
    pub llm_max_stop_strings: usize,
    /// Bytes of one stop string, at most (the text stream holds back as many).
    #[arg(long, env = "TRITIUM_LLM_MAX_STOP_STRING_BYTES", default_value_t = DEFAULT_MAX_STOP_STRING_BYTES)]
    pub llm_max_stop_string_bytes: usize,
    /// Stop token ids one completion may give, at most.
    #[arg(long, env = "TRITIUM_LLM_MAX_STOP_TOKEN_IDS", default_value_t = DEFAULT_MAX_STOP_TOKEN_IDS)]
    pub llm_max_stop_token_ids: usize,
    /// Prompts one `/v1/completions` request may list, at most (each runs as its own sequence).
    #[arg(long, env = "TRITIUM_LLM_MAX_PROMPTS", default_value_t = DEFAULT_MAX_PROMPTS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_max_prompts: u32,
    /// `n` and `best_of` one completion or chat may ask for, at most (each choice is a sequence).
    #[arg(long, env = "TRITIUM_LLM_MAX_CHOICES", default_value_t = DEFAULT_MAX_CHOICES as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_max_choices: u32,
    /// Bytes of memory all prompts being tokenized (and chats being rendered) may take at once:
    /// each is charged its length times what tokenizing costs per byte at worst (512), and waits
    /// for room; a prompt whose charge is more than all of it is refused (413). The default (1 GiB)
    /// takes a 2 MiB prompt.
    #[arg(long, env = "TRITIUM_MAX_TOKENIZING_BYTES", default_value_t = DEFAULT_MAX_TOKENIZING_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(MIN_TOKENIZING_BYTES..))]
    pub max_tokenizing_bytes: u64,
    /// Prompts tokenized (or chats rendered) at once, at most [default: the number of cores].
    /// Prompts of up to 16 KiB are tokenized in place and do not count.
    #[arg(long, env = "TRITIUM_MAX_CONCURRENT_TOKENIZATIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_tokenizations: Option<u32>,
}

/// The limits of the HTTP port.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Requests one h2c connection may have open at once.
    pub max_concurrent_streams: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body_bytes: DEFAULT_HTTP_BODY_BYTES,
            header_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(300)),
            max_concurrent_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_STREAMS: u32 = 1024;
/// Triton's HTTP default (64 MiB): tensors travel in these bodies. The request-byte budget bounds
/// what all of them hold at once.
pub const DEFAULT_HTTP_BODY_BYTES: usize = 64 << 20;
/// The smallest tokenizing budget: a prompt of the 16 KiB tokenized in place, charged as a longer one.
const MIN_TOKENIZING_BYTES: u64 = (INLINE_BYTES * TOKENIZE_BYTES_PER_INPUT_BYTE) as u64;
/// Half of a 2 GiB box: room for the models and the responses beside the requests.
pub const DEFAULT_BUFFERED_BYTES: u64 = 1 << 30;

/// What the limit flags resolve to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub shm: ShmPolicy,
    pub model_load_timeout: Duration,
    pub restricted: RestrictedProtocols,
    /// The HTTP port's restricted API groups.
    pub http_restricted: RestrictedProtocols,
    pub completion: CompletionLimits,
    /// What rendering chats and tokenizing prompts may hold at once.
    pub preprocess: PreprocessLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            shm: ShmPolicy::disabled(),
            model_load_timeout: Duration::from_secs(600),
            restricted: RestrictedProtocols::default(),
            http_restricted: RestrictedProtocols::default(),
            completion: CompletionLimits::default(),
            preprocess: PreprocessLimits::default(),
        }
    }
}

impl LimitArgs {
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.http_max_connections,
            max_body_bytes: self.http_max_body_bytes,
            header_timeout: millis(self.http_header_timeout),
            idle_timeout: millis(self.http_idle_timeout),
            max_concurrent_streams: if self.grpc_max_concurrent_streams == 0 {
                u32::MAX
            } else {
                self.grpc_max_concurrent_streams
            },
        }
    }

    pub fn limits(&self) -> Result<Limits, String> {
        if self.shm_max_regions > MAX_REGIONS_LIMIT {
            return Err(format!("--shm-max-regions is at most {MAX_REGIONS_LIMIT}"));
        }
        let shm = ShmPolicy {
            enabled: self.allow_shared_memory || self.shm_key_prefix.is_some(),
            key_prefix: self.shm_key_prefix.clone().filter(|p| !p.is_empty()),
            max_regions: self.shm_max_regions,
        };
        Ok(Limits {
            shm,
            model_load_timeout: Duration::from_secs(self.model_load_timeout_secs.max(1)),
            restricted: RestrictedProtocols::parse(
                "--grpc-restricted-protocol",
                &self.grpc_restricted_protocol,
                crate::restricted::GRPC_HEADER_PREFIX,
            )?,
            http_restricted: RestrictedProtocols::parse("--http-restricted-api", &self.http_restricted_api, "")?,
            completion: CompletionLimits {
                max_stop_strings: self.llm_max_stop_strings,
                max_stop_string_bytes: self.llm_max_stop_string_bytes,
                max_stop_token_ids: self.llm_max_stop_token_ids,
                max_prompts: self.llm_max_prompts as usize,
                max_choices: self.llm_max_choices as usize,
            },
            preprocess: PreprocessLimits {
                max_bytes: usize::try_from(self.max_tokenizing_bytes).unwrap_or(usize::MAX),
                max_concurrent: self
                    .max_concurrent_tokenizations
                    .map_or(PreprocessLimits::default().max_concurrent, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            },
        })
    }
}
