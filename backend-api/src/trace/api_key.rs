//! The API key's name on a request's trace (never the key).

use std::sync::Arc;

use super::RequestTrace;

/// The name of the API key a request came with (never the key), put in the request's extensions
/// by the door that checked it, and recorded on its trace as [`API_KEY_ATTRIBUTE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyName(pub Arc<str>);

/// The trace attribute naming the request's API key.
pub const API_KEY_ATTRIBUTE: &str = "tritium.api_key.name";

impl RequestTrace {
    /// Records the request's API key name, when it came with one.
    pub fn name_api_key(&self, key: Option<&ApiKeyName>) {
        if let Some(ApiKeyName(name)) = key {
            self.set_attribute(API_KEY_ATTRIBUTE, name.to_string());
        }
    }
}
