//! The repository's one error type, with a [`code`](RepositoryError::code) per variant so the
//! transports map it to gRPC and HTTP status in one place.

use std::path::PathBuf;

use tritium_proto::ErrorCode;

/// Everything reading a model repository or a model configuration can fail with.
///
/// Variants that carry a `model` may be produced by functions that do not know the model's name
/// (such as [`parse_config_text`](super::parse_config_text)); the field is then empty and
/// [`with_model`](RepositoryError::with_model) fills it in.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The configuration text or JSON is not a well-formed `ModelConfig`.
    #[error("failed to parse the configuration of {}: {reason}", subject(model))]
    ConfigParse { model: String, reason: String },

    /// The configuration parsed but breaks a rule Triton enforces; `reason` names the field.
    #[error("invalid configuration of {}: {reason}", subject(model))]
    InvalidConfig { model: String, reason: String },

    /// The configuration's `name` differs from its folder's (Triton's wording).
    #[error("unexpected directory name '{dir}' for model '{name}', directory name must equal model name")]
    NameMismatch { dir: String, name: String },

    /// A `specific` version policy lists a version with no folder on disk.
    #[error("version {version} is specified for {} but the version directory is not present", subject(model))]
    VersionNotOnDisk { model: String, version: i64 },

    /// The version policy selects nothing from what is on disk (Triton's wording).
    #[error("at least one version must be available under the version policy of {}", subject(model))]
    NoVersionAvailable { model: String },

    /// Two repositories hold a folder with the same model name.
    #[error(
        "model '{name}' appears in more than one model repository: '{}' and '{}'",
        first.display(),
        second.display()
    )]
    DuplicateModel { name: String, first: PathBuf, second: PathBuf },

    /// A configured repository path does not exist or is not a directory.
    #[error("model repository '{}' does not exist or is not a directory", path.display())]
    RepositoryNotFound { path: PathBuf },

    /// Reading the file system failed.
    #[error("failed to read '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The compiled-in descriptor set is unusable; a build problem, never the user's input.
    #[error("model configuration schema unavailable: {reason}")]
    Schema { reason: String },
}

impl RepositoryError {
    /// The Triton error class this maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            RepositoryError::ConfigParse { .. }
            | RepositoryError::InvalidConfig { .. }
            | RepositoryError::NameMismatch { .. }
            | RepositoryError::VersionNotOnDisk { .. }
            | RepositoryError::NoVersionAvailable { .. } => ErrorCode::InvalidArg,
            RepositoryError::DuplicateModel { .. }
            | RepositoryError::RepositoryNotFound { .. }
            | RepositoryError::Io { .. }
            | RepositoryError::Schema { .. } => ErrorCode::Internal,
        }
    }

    /// Fills an empty `model` field with `name`; other errors pass through unchanged.
    pub fn with_model(mut self, name: &str) -> Self {
        match &mut self {
            RepositoryError::ConfigParse { model, .. }
            | RepositoryError::InvalidConfig { model, .. }
            | RepositoryError::VersionNotOnDisk { model, .. }
            | RepositoryError::NoVersionAvailable { model }
                if model.is_empty() =>
            {
                *model = name.to_string();
            }
            _ => {}
        }
        self
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RepositoryError::Io { path: path.into(), source }
    }
}

/// "model 'x'", or a neutral phrase while the name is not known yet.
fn subject(model: &str) -> String {
    if model.is_empty() { "the model".to_string() } else { format!("model '{model}'") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_model_once_known() {
        let err = RepositoryError::ConfigParse { model: String::new(), reason: "bad".into() };
        assert_eq!(err.to_string(), "failed to parse the configuration of the model: bad");
        let err = err.with_model("m");
        assert_eq!(err.to_string(), "failed to parse the configuration of model 'm': bad");
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        let err = RepositoryError::NoVersionAvailable { model: "a".into() }.with_model("b");
        assert_eq!(err.to_string(), "at least one version must be available under the version policy of model 'a'");
    }

    #[test]
    fn codes_follow_the_class() {
        let dup = RepositoryError::DuplicateModel { name: "m".into(), first: "/a".into(), second: "/b".into() };
        assert_eq!(dup.code(), ErrorCode::Internal);
        let io = RepositoryError::io("/x", std::io::Error::other("boom"));
        assert_eq!(io.code(), ErrorCode::Internal);
        assert_eq!(io.to_string(), "failed to read '/x': boom");
    }
}
