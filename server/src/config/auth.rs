//! `--api-key` and `--api-key-file`: the keys every inference door asks for
//! ([`crate::api_keys`]).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::api_keys::ApiKeys;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "API keys")]
pub struct AuthArgs {
    /// A key every inference request must name, as `Authorization: Bearer KEY` (OpenAI's clients,
    /// KServe over HTTP and gRPC) or `x-api-key: KEY` (Anthropic's); repeatable. Without a key
    /// (here or in --api-key-file) the doors are open. Health routes stay open.
    #[arg(long = "api-key", env = "TRITIUM_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<String>,
    /// A file of keys, one per line: `NAME:KEY` or `KEY`; re-read when it changes and on SIGHUP.
    /// Logs and metrics name a key by its NAME, never by the key.
    #[arg(long, env = "TRITIUM_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
}

impl AuthArgs {
    pub fn keys(&self) -> Result<Option<Arc<ApiKeys>>, String> {
        ApiKeys::new(&self.api_key, self.api_key_file.clone())
    }
}
