//! End-to-end test harness: a real Tritium server on a pre-bound ephemeral listener, and model
//! repositories written by the tests themselves.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_repository_parameter::ParameterChoice as RepoParam;
use tritium_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelRepositoryParameter, RepositoryIndexRequest, RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest,
};
use tritium_server::{ServerConfig, ServerHandle, spawn};
use tritium_tensor::Tensor;
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

    /// Serves the built-in repository with system shared memory turned on for any key (the
    /// server's own default is off).
    pub async fn with_shared_memory() -> TestServer {
        let mut config = ServerConfig::default();
        config.limits.shm = tritium_server::shm::ShmPolicy::any_key();
        TestServer::start(config, None).await
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

/// An `add_sub` model config for one datatype: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1,
/// every tensor of `dims`.
pub fn add_sub_config(name: &str, config_type: &str, dims: &[i64], max_batch_size: i32) -> String {
    let dims: Vec<String> = dims.iter().map(i64::to_string).collect();
    let dims = dims.join(", ");
    let tensor = |n: &str| format!(r#"{{ name: "{n}", data_type: {config_type}, dims: [ {dims} ] }}"#);
    format!(
        "name: \"{name}\"\nbackend: \"add_sub\"\nmax_batch_size: {max_batch_size}\ninput [ {}, {} ]\noutput [ {}, {} ]\n",
        tensor("INPUT0"),
        tensor("INPUT1"),
        tensor("OUTPUT0"),
        tensor("OUTPUT1"),
    )
}

/// The `repeat` model config of the built-in repository, for repositories written by tests.
pub const REPEAT_CONFIG: &str = r#"
backend: "tritium_repeat"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "DELAY_MS", data_type: TYPE_UINT32, dims: [ 1 ], optional: true }
]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"#;

/// A request for the decoupled `repeat` model: `count` responses, `delay_ms` apart, optionally
/// followed by an empty final response.
pub fn repeat_request(id: &str, count: i32, delay_ms: Option<u32>, empty_final: bool) -> ModelInferRequest {
    let mut builder = InferRequestBuilder::new("repeat").id(id).input(Tensor::from_slice("IN", vec![1], &[count]));
    if let Some(delay) = delay_ms {
        builder = builder.input(Tensor::from_slice("DELAY_MS", vec![1], &[delay]));
    }
    if empty_final {
        builder = builder.parameter("triton_enable_empty_final_response", ParameterChoice::BoolParam(true));
    }
    builder.build()
}

/// An `identity` request on `model` with FP32 values.
pub fn identity_request(model: &str, shape: Vec<i64>, values: &[f32]) -> ModelInferRequest {
    InferRequestBuilder::new(model).input(Tensor::from_slice("INPUT0", shape, values)).build()
}

/// The one output of a stream response of `repeat`, `OUT`, as an i32.
pub fn repeat_value(response: &ModelInferResponse) -> i32 {
    let out = output_tensor(response, "OUT").expect("OUT").to_vec::<i32>().expect("INT32");
    assert_eq!(out.len(), 1, "OUT holds one element");
    out[0]
}

/// Asserts a call failed with `code` and exactly `message`.
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, message: &str) {
    let status = result.expect_err("the call must fail");
    assert_eq!((status.code(), status.message()), (code, message), "unexpected status");
}

/// Asserts a call failed with `code` and a message containing each of `needles`.
pub fn assert_status_contains<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, needles: &[&str]) {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "code of {:?}", status.message());
    for needle in needles {
        assert!(status.message().contains(needle), "{:?} lacks {:?}", status.message(), needle);
    }
}

/// Polls `check` every 20 ms until it gives `Some`, failing after `timeout`. For state that
/// changes in the background (poll mode), never for readiness at start.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The repository index as (name, version, state, reason) rows.
pub async fn repository_index(client: &mut InferClient, ready_only: bool) -> Vec<(String, String, String, String)> {
    let request = RepositoryIndexRequest { repository_name: String::new(), ready: ready_only };
    let index = client.raw().repository_index(request).await.expect("repository index").into_inner();
    index.models.into_iter().map(|m| (m.name, m.version, m.state, m.reason)).collect()
}

/// One index row, for comparing with [`repository_index`].
pub fn index_row(name: &str, version: &str, state: &str, reason: &str) -> (String, String, String, String) {
    (name.to_string(), version.to_string(), state.to_string(), reason.to_string())
}

/// RepositoryModelLoad, with an optional `config` JSON override.
pub async fn load_model(client: &mut InferClient, name: &str, config_json: Option<&str>) -> Result<(), tonic::Status> {
    let mut parameters = HashMap::new();
    if let Some(json) = config_json {
        parameters.insert(
            "config".to_string(),
            ModelRepositoryParameter { parameter_choice: Some(RepoParam::StringParam(json.to_string())) },
        );
    }
    let request = RepositoryModelLoadRequest { repository_name: String::new(), model_name: name.to_string(), parameters };
    client.raw().repository_model_load(request).await.map(|_| ())
}

/// RepositoryModelUnload.
pub async fn unload_model(client: &mut InferClient, name: &str) -> Result<(), tonic::Status> {
    let request =
        RepositoryModelUnloadRequest { repository_name: String::new(), model_name: name.to_string(), parameters: HashMap::new() };
    client.raw().repository_model_unload(request).await.map(|_| ())
}

/// A real POSIX shared-memory segment, created and mapped by the test (as a client would),
/// unlinked and unmapped on drop.
#[derive(Debug)]
pub struct Segment {
    name: CString,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the segment; tests access it from one task at a time.
unsafe impl Send for Segment {}

impl Segment {
    /// Creates a zeroed segment of `len` bytes with a name unique to this process and `tag`.
    pub fn create(tag: &str, len: usize) -> Segment {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(format!("/tritium_e2e_{}_{n}_{tag}", std::process::id())).expect("no NUL");
        // SAFETY: plain libc calls on a name this process owns; the descriptor is closed after
        // mapping, and the mapping is checked before use.
        let ptr = unsafe {
            libc::shm_unlink(name.as_ptr());
            let fd = libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600);
            assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0, "ftruncate");
            let ptr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            libc::close(fd);
            assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
            ptr.cast::<u8>()
        };
        Segment { name, ptr, len }
    }

    /// The key to register the segment under (its `shm_open` name).
    pub fn key(&self) -> String {
        self.name.to_string_lossy().into_owned()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` into the segment at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len, "write past the segment");
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
    }

    /// Shrinks (or grows) the segment's file to `len` bytes behind every mapping of it, as a
    /// careless or hostile client can at any moment.
    pub fn resize(&self, len: usize) {
        // SAFETY: plain libc calls on a name this process created; the descriptor is closed again.
        unsafe {
            let fd = libc::shm_open(self.name.as_ptr(), libc::O_RDWR, 0);
            assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0, "ftruncate");
            libc::close(fd);
        }
    }

    /// Copies `len` bytes out of the segment at `offset`.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len, "read past the segment");
        let mut out = vec![0; len];
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), len) };
        out
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping and unlinking a name this process created.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
            libc::shm_unlink(self.name.as_ptr());
        }
    }
}
