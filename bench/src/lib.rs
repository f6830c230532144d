//! Tritium's measuring sticks, for issue 4's benchmarks.
//!
//! - The `limit-server` binary: the thinnest tonic server that perf_analyzer can drive. It answers
//!   ModelMetadata, ModelConfig, ModelInfer and ModelStreamInfer for one identity model with no
//!   validation and no backend, echoing each request's raw payloads back without copying them.
//!   Whatever it costs per request is what tonic, HTTP/2 and protobuf cost; Tritium is measured
//!   against it to see how much its own layers add.
//! - criterion benches (`cargo bench -p tritium-bench`): `tensor` (typed-contents conversion,
//!   validation, the BYTES codec, typed views) and `request_path` (a perf_analyzer-shaped request
//!   through decode, the in-process worker, encode and serialization, with no network).
//!
//! This library holds what they share: the limit server's answers ([`limit`]), requests shaped
//! like the ones perf_analyzer sends ([`requests`]), and the LLM examples' prompt file
//! ([`read_prompts`]).
//!
//! ```
//! use tritium_bench::{limit, requests};
//!
//! let request = requests::infer_request("identity", &[requests::fp32_input("INPUT0", 16)], &["OUTPUT0"]);
//! let payload = request.raw_input_contents[0].as_ptr();
//! let response = limit::echo(request);
//! assert_eq!(response.outputs[0].name, "OUTPUT0");
//! assert_eq!(response.outputs[0].shape, [16]);
//! // The payload is moved, not copied.
//! assert_eq!(response.raw_output_contents[0].as_ptr(), payload);
//! ```

pub mod limit;
pub mod requests;

/// The prompts of `bench/llm.py`'s examples (`engine_itl`, `llm_client`): one per non-empty line.
pub fn read_prompts(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let prompts: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
    if prompts.is_empty() {
        return Err(format!("{} holds no prompts", path.display()));
    }
    Ok(prompts)
}
