//! Tritium's protocol crate: the KServe v2 / Triton `inference` package generated from our own
//! `.proto` files, the descriptor set used for reflection and `config.pbtxt` parsing, and the
//! one closed [`ErrorCode`] every layer maps its errors to.
//!
//! ```
//! use tritium_proto::inference::ModelInferRequest;
//! use tritium_proto::ErrorCode;
//!
//! let request = ModelInferRequest { model_name: "identity".into(), ..Default::default() };
//! assert_eq!(request.model_name, "identity");
//! assert_eq!(ErrorCode::NotFound.http_status(), 404);
//! ```

/// Generated messages, enums and the `GRPCInferenceService` client and server.
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// The worker request plane (`proto/worker.proto`, package `tritium.worker.v1`): the `Worker`
/// service a worker process serves and the frontend calls, over the `inference` messages.
#[allow(clippy::all, missing_docs)]
pub mod worker {
    include!(concat!(env!("OUT_DIR"), "/worker/tritium.worker.v1.rs"));
}

/// Serialized `FileDescriptorSet` of `grpc_service.proto` and `model_config.proto` (not
/// `worker.proto`: the frontend's reflection lists only what the frontend serves).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tritium_descriptor.bin"));

/// Third-party engines' own gRPC service (`proto/engine.proto`, package `vllm.grpc.engine`):
/// vLLM's `VllmEngine`, the tokens-in, tokens-out contract Tritium drives engines through.
#[allow(clippy::all, missing_docs)]
pub mod engine {
    include!(concat!(env!("OUT_DIR"), "/engine/vllm.grpc.engine.rs"));
}

/// Serialized `FileDescriptorSet` of `worker.proto` and its imports, for a worker's reflection.
pub const WORKER_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tritium_worker_descriptor.bin"));

/// The fully qualified gRPC service name, as health checks and reflection see it.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// Triton's error classes, mapped once to gRPC and HTTP status codes.
///
/// Every crate's error type exposes `code() -> ErrorCode`; transports convert from there and
/// nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unknown,
    Internal,
    NotFound,
    InvalidArg,
    Unavailable,
    Unsupported,
    AlreadyExists,
    Cancelled,
    /// Queue or capacity limits; Triton has no class of its own for it, gRPC and HTTP do.
    ResourceExhausted,
    /// A caller known (by its API key) but not allowed this model; Triton has no class for it.
    PermissionDenied,
}

impl ErrorCode {
    /// The gRPC status code Triton's `GrpcStatusUtil::CodeToStatus` uses for this class.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::Unknown => tonic::Code::Unknown,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::InvalidArg => tonic::Code::InvalidArgument,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Unsupported => tonic::Code::Unimplemented,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::Cancelled => tonic::Code::Cancelled,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        }
    }

    /// The class of a gRPC status code, the inverse of [`ErrorCode::grpc_code`] (a remote
    /// worker's or a called service's status); codes no class maps to are `Unknown`.
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::Internal => ErrorCode::Internal,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::InvalidArgument => ErrorCode::InvalidArg,
            tonic::Code::Unavailable => ErrorCode::Unavailable,
            tonic::Code::Unimplemented => ErrorCode::Unsupported,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::Cancelled => ErrorCode::Cancelled,
            tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            _ => ErrorCode::Unknown,
        }
    }

    /// The HTTP status Triton documents for this class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Internal => 500,
            ErrorCode::NotFound => 404,
            ErrorCode::Unavailable => 503,
            ErrorCode::Unsupported => 501,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::Unknown | ErrorCode::InvalidArg | ErrorCode::AlreadyExists | ErrorCode::Cancelled => 400,
        }
    }

    /// Builds the gRPC status for an error of this class.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_set_holds_both_files() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let names: Vec<_> = set.file.iter().filter_map(|f| f.name.clone()).collect();
        assert!(names.contains(&"grpc_service.proto".to_string()), "{names:?}");
        assert!(names.contains(&"model_config.proto".to_string()), "{names:?}");
    }

    #[test]
    fn the_worker_plane_has_a_descriptor_set_of_its_own() {
        use prost::Message;
        let names = |bytes: &[u8]| -> Vec<String> {
            let set = prost_types::FileDescriptorSet::decode(bytes).expect("descriptor set decodes");
            set.file.iter().filter_map(|f| f.name.clone()).collect()
        };
        assert!(!names(FILE_DESCRIPTOR_SET).contains(&"worker.proto".to_string()));
        assert!(names(WORKER_FILE_DESCRIPTOR_SET).contains(&"worker.proto".to_string()));
    }

    #[test]
    fn every_error_class_survives_the_wire() {
        for code in [
            ErrorCode::Unknown,
            ErrorCode::Internal,
            ErrorCode::NotFound,
            ErrorCode::InvalidArg,
            ErrorCode::Unavailable,
            ErrorCode::Unsupported,
            ErrorCode::AlreadyExists,
            ErrorCode::Cancelled,
            ErrorCode::ResourceExhausted,
        ] {
            assert_eq!(ErrorCode::from_grpc(code.grpc_code()), code);
        }
    }

    #[test]
    fn codes_map_like_triton() {
        assert_eq!(ErrorCode::Unsupported.grpc_code(), tonic::Code::Unimplemented);
        assert_eq!(ErrorCode::InvalidArg.http_status(), 400);
        assert_eq!(ErrorCode::Unavailable.status("x").code(), tonic::Code::Unavailable);
    }
}
