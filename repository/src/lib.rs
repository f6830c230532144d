//! The model repository: Triton's on-disk layout (`<repo>/<model>/config.pbtxt` plus numeric
//! version folders), `ModelConfig` parsing from protobuf text format and Triton's JSON, the checks
//! Triton applies before loading, and version selection by policy.
//!
//! This crate only reads; loading, unloading and polling belong to the caller, which compares
//! [`ModelSource::fingerprint`]s between scans to see what changed.
//!
//! ```
//! use tritium_repository::{normalize_config, parse_config_text, select_versions};
//!
//! let text = r#"
//!     backend: "identity"
//!     max_batch_size: 8
//!     input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
//!     output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
//!     version_policy { latest { num_versions: 2 } }
//! "#;
//! let config = normalize_config("simple", parse_config_text(text)?)?;
//! assert_eq!(config.name, "simple");
//! assert_eq!(select_versions(config.version_policy.as_ref(), &[1, 2, 3])?, [2, 3]);
//! # Ok::<(), tritium_repository::RepositoryError>(())
//! ```

mod config;
mod error;
pub mod fields;
pub mod labels;
pub mod model_files;
mod pbtxt;
#[cfg(test)]
mod proptests;
mod scan;
mod versions;

pub use config::{
    config_to_json, fill_core_defaults, normalize_config, parse_config_json, parse_config_text, render_config_json,
};
pub use error::RepositoryError;
pub use fields::{audit_fields, check_fields};
pub use labels::Labels;
pub use scan::{CONFIG_FILE, ModelSource, find_model, is_plain_name, scan_repositories};
pub use versions::{select_model_versions, select_versions};
