//! End-to-end test harness: a real Tritium server on a pre-bound ephemeral listener, and model
//! repositories written by the tests themselves.

use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tritium_grpc_clients::InferClient;
use tritium_server::{ServerConfig, ServerHandle, spawn};
use tritium_worker::RepositoryOptions;

/// A server for one test; dropping it shuts the server down.
#[derive(Debug)]
pub struct TestServer {
    pub handle: ServerHandle,
    /// Keeps a test's repository folder alive as long as the server.
    pub repository: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Serves the built-in repository.
    pub async fn builtin() -> TestServer {
        TestServer::start(ServerConfig::default(), None).await
    }

    /// Serves a repository folder with the given options (paths are filled in).
    pub async fn with_repository(repository: tempfile::TempDir, mut options: RepositoryOptions) -> TestServer {
        options.paths = vec![repository.path().to_path_buf()];
        let config = ServerConfig { repository: options, ..ServerConfig::default() };
        TestServer::start(config, Some(repository)).await
    }

    pub async fn start(config: ServerConfig, repository: Option<tempfile::TempDir>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let handle = spawn(config, listener).await.expect("server starts");
        TestServer { handle, repository }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.handle.grpc_addr())
    }

    pub async fn client(&self) -> InferClient {
        InferClient::connect(self.uri()).await.expect("client connects")
    }

    pub fn repository_path(&self) -> Option<&Path> {
        self.repository.as_ref().map(|r| r.path())
    }
}

/// Writes `<repo>/<name>/config.pbtxt` and the version folders.
pub fn write_model(repository: &Path, name: &str, config: &str, versions: &[i64]) -> PathBuf {
    let dir = repository.join(name);
    std::fs::create_dir_all(&dir).expect("model folder");
    std::fs::write(dir.join("config.pbtxt"), config).expect("config.pbtxt");
    for version in versions {
        std::fs::create_dir_all(dir.join(version.to_string())).expect("version folder");
    }
    dir
}

/// A fresh temporary repository folder.
pub fn temp_repository() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary repository")
}

/// An identity model config for one datatype (config enum name, e.g. `TYPE_FP16`).
pub fn identity_config(name: &str, config_type: &str, max_batch_size: i32) -> String {
    format!(
        r#"name: "{name}"
backend: "identity"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0", data_type: {config_type}, dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0", data_type: {config_type}, dims: [ -1 ] }} ]
"#
    )
}
