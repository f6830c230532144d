//! [`ShmError`]: every way a system shared-memory call can fail, with Triton 2.51's codes and texts.

use tritium_proto::ErrorCode;

/// Key prefix Triton reserves for its Python backend's own regions.
pub const RESERVED_KEY_PREFIX: &str = "triton_python_backend_shm_region_";

/// A system shared-memory failure. Fields are public so transports can build their own texts
/// (see [`ShmError::message_for_output`]); messages only print client values, never do arithmetic
/// on them, so they cannot overflow or panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// `shm_open(key, O_RDWR)` failed: no such segment, no permission, or a malformed key.
    #[error("Unable to open shared memory region: '{key}'")]
    Open { key: String },

    /// `fstat` on the opened segment failed.
    #[error("Invalid shared memory region: '{key}'")]
    Stat { key: String },

    /// `[offset, offset + byte_size)` does not fit in the segment the key names: Triton's words
    /// ("invalid args"), then why.
    #[error(
        "failed to register shared memory region '{name}': invalid args (offset {offset} + byte_size {byte_size} \
         exceeds the size of shared memory key '{key}', {segment_size} bytes)"
    )]
    ExceedsSegment { name: String, key: String, offset: u64, byte_size: u64, segment_size: u64 },

    /// `mmap` itself failed (address space or memory exhausted).
    #[error("failed to register shared memory region '{name}': unable to map shared memory: {reason}")]
    Map { name: String, reason: String },

    /// The key uses the prefix Triton keeps for its Python backend.
    #[error(
        "cannot register shared memory region '{name}' with key '{key}' as the key contains the reserved prefix '{RESERVED_KEY_PREFIX}'"
    )]
    ReservedKey { name: String, key: String },

    /// A region with this name is already registered.
    #[error("shared memory region '{name}' already in manager")]
    AlreadyExists { name: String },

    /// No region with this name is registered.
    #[error("Unable to find system shared memory region: '{name}'")]
    NotFound { name: String },

    /// The client shrank the segment under a registered region (or did so while a request used
    /// it). The region stays refused until it is unregistered and registered again.
    #[error(
        "shared memory region '{name}' is no longer usable: its segment '{key}' was truncated below the \
         registered size; unregister it and register it again"
    )]
    Truncated { name: String, key: String },

    /// System shared memory is turned off on this server, or the key is outside the allowed prefix.
    #[error("{reason}")]
    NotAllowed { reason: String },

    /// The server already holds the most regions it may.
    #[error(
        "failed to register shared memory region '{name}': the server already has {limit} regions registered (--shm-max-regions)"
    )]
    TooManyRegions { name: String, limit: usize },

    /// A tensor's `[offset, offset + byte_size)` is not inside the registered region.
    #[error(
        "Invalid offset + byte size for shared memory region: '{region}' ({offset} + {byte_size} exceeds \
         the size of shared memory region '{region}' ({region_size} bytes))"
    )]
    OutOfBounds { region: String, offset: u64, byte_size: u64, region_size: u64 },

    /// An output needs `needed` bytes but the client gave only `available` for it.
    #[error(
        "shared memory size specified with the request for output in region '{region}' ({available} bytes) \
         should be at least {needed} bytes to hold the results"
    )]
    OutputTooSmall { region: String, needed: u64, available: u64 },
}

impl ShmError {
    /// The Triton error class of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ShmError::Open { .. }
            | ShmError::Stat { .. }
            | ShmError::Map { .. }
            | ShmError::OutputTooSmall { .. }
            | ShmError::Truncated { .. } => ErrorCode::Internal,
            ShmError::NotAllowed { .. } => ErrorCode::Unavailable,
            ShmError::TooManyRegions { .. } => ErrorCode::ResourceExhausted,
            ShmError::ReservedKey { .. } | ShmError::ExceedsSegment { .. } | ShmError::OutOfBounds { .. } => {
                ErrorCode::InvalidArg
            }
            ShmError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            ShmError::NotFound { .. } => ErrorCode::NotFound,
        }
    }

    /// The message Triton sends when writing output `output` failed; [`ShmError::OutputTooSmall`]
    /// gets Triton's exact wording with the output name, every other error its usual text.
    pub fn message_for_output(&self, output: &str) -> String {
        match self {
            ShmError::OutputTooSmall { needed, available, .. } => format!(
                "shared memory size specified with the request for output '{output}' ({available} bytes) \
                 should be at least {needed} bytes to hold the results"
            ),
            other => other.to_string(),
        }
    }
}
