//! `tritium._tritium`: the native half of the `tritium` Python package. It runs the `tritium`
//! command line ([`cli`]), serves in-process on the server's own tokio threads ([`server::Server`],
//! the GIL released while it serves), joins a cluster as a worker ([`worker::Worker`]), and
//! serves Python callables as models through a backend of the package's own ([`function`]),
//! which the core schedules and batches like any other.
//!
//! ```python
//! import numpy as np, tritium
//!
//! server = tritium.Server(grpc_port=0, http_port=0, metrics_port=0)
//! server.bind("double", lambda requests: [{"y": r["x"] * 2} for r in requests],
//!             inputs=[tritium.Tensor(name="x", dtype=np.float32, shape=(-1,))],
//!             outputs=[tritium.Tensor(name="y", dtype=np.float32, shape=(-1,))])
//! with server:
//!     print(server.grpc_port)
//! ```

mod buffer;
mod function;
mod kv;
mod llm;
mod server;
mod worker;

use pyo3::prelude::*;

/// Runs the `tritium` command line (`argv` without the program name) to its end, the GIL
/// released; returns its exit status.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    let args: Vec<String> = std::iter::once("tritium".to_string()).chain(argv).collect();
    let code = py.detach(move || tritium_server::cli::run(args));
    if code == std::process::ExitCode::SUCCESS { 0 } else { 1 }
}

#[pymodule]
fn _tritium(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    m.add_class::<server::Server>()?;
    m.add_function(wrap_pyfunction!(server::option_takes_value, m)?)?;
    m.add_class::<worker::Worker>()?;
    m.add_function(wrap_pyfunction!(worker::worker_option_takes_value, m)?)?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<kv::KvPublisher>()?;
    m.add_function(wrap_pyfunction!(kv::kv_block_hashes, m)?)?;
    m.add("BACKEND_NAME", function::BACKEND_NAME)?;
    m.add("LLM_BACKEND_NAME", llm::LLM_BACKEND_NAME)?;
    Ok(())
}
