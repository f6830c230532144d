//! Python callables served as models: the `python_function` backend. A model bound with
//! `Server.bind` is declared to the core by its config text (backend `python_function`); the
//! factory finds its callable by model name in the server's [`Functions`]. The core's scheduler
//! batches requests as for any backend; each execution takes the GIL on a blocking thread, never
//! on a tokio worker, and hands the callable numpy views of the input bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use tritium_backend_api::{
    Backend, BackendContext, BackendError, BackendFactory, BackendRegistry, BackendRequest, Engine, ParamValue, Responder,
};
use tritium_proto::ErrorCode;
use tritium_tensor::{DataType, Tensor};

use crate::buffer::Buffer;

/// The backend name a bound function's config names.
pub const BACKEND_NAME: &str = "python_function";

/// The callables bound on one server, by model name.
pub type Functions = Arc<Mutex<HashMap<String, Arc<Py<PyAny>>>>>;

/// Registers the `python_function` backend, serving the callables in `functions`.
pub fn register(registry: &mut BackendRegistry, functions: Functions) {
    registry.register(BACKEND_NAME, FunctionFactory { functions });
}

struct FunctionFactory {
    functions: Functions,
}

impl BackendFactory for FunctionFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let functions = self.functions.lock();
        let function = functions
            .get(context.model_name)
            .ok_or_else(|| format!("no Python function is bound as model '{}'", context.model_name))?;
        let mut outputs = Vec::with_capacity(context.config.output.len());
        for output in &context.config.output {
            let datatype = DataType::from_config(output.data_type)
                .ok_or_else(|| format!("output '{}' has an unknown data type", output.name))?;
            outputs.push((output.name.clone(), datatype));
        }
        let timeout = match context.config.parameters.get(TIMEOUT_PARAMETER) {
            None => None,
            Some(value) => match value.string_value.trim().parse::<f64>() {
                Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Some(Duration::from_secs_f64(seconds)),
                _ => return Err(format!("parameter '{TIMEOUT_PARAMETER}' must be a positive number of seconds")),
            },
        };
        let call = Call {
            model: context.model_name.to_string(),
            function: Arc::clone(function),
            outputs,
            batched: context.config.max_batch_size > 0,
            decoupled: context.config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled),
            timeout,
        };
        Ok(Engine::Tensors(Arc::new(FunctionBackend { call: Arc::new(call) })))
    }
}

struct FunctionBackend {
    call: Arc<Call>,
}

/// What one execution needs, shared with the blocking thread that runs it.
struct Call {
    model: String,
    function: Arc<Py<PyAny>>,
    /// The config's outputs: every one must come back, with this datatype.
    outputs: Vec<(String, DataType)>,
    batched: bool,
    /// A generator function: each item it yields is one response.
    decoupled: bool,
    /// How long one call may take (`ModelConfig(timeout_s=...)`).
    timeout: Option<Duration>,
}

/// The model-config parameter a bound model's `timeout_s` becomes.
const TIMEOUT_PARAMETER: &str = "execute_timeout_seconds";

/// Responses of a decoupled call in flight from the Python thread to the responder.
const STREAM_DEPTH: usize = 4;

#[async_trait]
impl Backend for FunctionBackend {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let call = Arc::clone(&self.call);
        let unfinished =
            |e: tokio::task::JoinError| BackendError::failed(ErrorCode::Internal, format!("the Python call did not finish: {e}"));
        if !call.decoupled {
            let (timeout, model) = (call.timeout, call.model.clone());
            let running = Arc::new(Running::default());
            let this_call = Arc::clone(&running);
            let mut task = tokio::task::spawn_blocking(move || {
                Python::attach(|py| {
                    // SAFETY: no precondition; the id of the thread that runs the call.
                    let thread = u64::from(unsafe { pyo3::ffi::PyThread_get_thread_ident() });
                    this_call.thread.store(thread, Ordering::Release);
                    let outputs = call.run(py, request);
                    // Under the GIL, as `interrupt` looks: a TimeoutError sent too late never reaches
                    // the next call this pool thread runs.
                    this_call.done.store(true, Ordering::Release);
                    clear_interrupt(thread);
                    outputs
                })
            });
            let outputs = match timeout {
                None => task.await.map_err(unfinished)??,
                Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                    Ok(joined) => joined.map_err(unfinished)??,
                    Err(_) => {
                        interrupt(running);
                        return Err(BackendError::failed(
                            ErrorCode::Unavailable,
                            format!(
                                "the model '{model}' did not return from its Python function within {} s",
                                limit.as_secs_f64()
                            ),
                        ));
                    }
                },
            };
            return responder.send(outputs).await;
        }
        let (sender, mut responses) = tokio::sync::mpsc::channel(STREAM_DEPTH);
        let task = tokio::task::spawn_blocking(move || Python::attach(|py| call.stream(py, request, sender)));
        // Dropping this future (the client went away) drops `responses`, which ends the generator.
        while let Some(outputs) = responses.recv().await {
            responder.send(outputs).await?;
        }
        task.await.map_err(unfinished)?
    }
}

/// A call on its blocking thread: the Python thread's id (0 until it starts) and whether it has
/// returned, both written under the GIL.
#[derive(Default)]
struct Running {
    thread: AtomicU64,
    done: AtomicBool,
}

/// Raises TimeoutError in the thread of a call that is still running, at its next Python line,
/// from a thread of its own: taking the GIL may wait for the stuck call to yield it.
fn interrupt(running: Arc<Running>) {
    std::thread::spawn(move || {
        Python::attach(|_| {
            let thread = running.thread.load(Ordering::Acquire);
            if thread == 0 || running.done.load(Ordering::Acquire) {
                return;
            }
            let Ok(id) = std::os::raw::c_long::try_from(thread) else { return };
            // SAFETY: the GIL is held; the exception type is a static of the interpreter.
            unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(id, pyo3::ffi::PyExc_TimeoutError) };
        });
    });
}

/// Drops a TimeoutError [`interrupt`] sent to `thread` that has not been raised yet. The GIL must
/// be held.
fn clear_interrupt(thread: u64) {
    if let Ok(id) = std::os::raw::c_long::try_from(thread) {
        // SAFETY: the caller holds the GIL; a null exception clears the pending one.
        unsafe { pyo3::ffi::PyThreadState_SetAsyncExc(id, std::ptr::null_mut()) };
    }
}

impl Call {
    fn run(&self, py: Python<'_>, request: BackendRequest) -> Result<Vec<Tensor>, BackendError> {
        let batch = self.batch_size(&request);
        let answer = self.invoke(py, request).map_err(|error| self.raised(py, error))?;
        self.outputs(py, answer, batch)
    }

    /// Runs a generator function, sending each response it yields until it ends or the
    /// receiver is gone.
    fn stream(
        &self,
        py: Python<'_>,
        request: BackendRequest,
        sender: tokio::sync::mpsc::Sender<Vec<Tensor>>,
    ) -> Result<(), BackendError> {
        let batch = self.batch_size(&request);
        let raised = |py: Python<'_>, error: PyErr| self.raised(py, error);
        let answers = self.invoke(py, request).map_err(|e| raised(py, e))?;
        let answers = answers.try_iter().map_err(|e| raised(py, e))?;
        for answer in answers {
            let outputs = self.outputs(py, answer.map_err(|e| raised(py, e))?, batch)?;
            // The GIL is free while the responder catches up.
            if py.detach(|| sender.blocking_send(outputs)).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn batch_size(&self, request: &BackendRequest) -> Option<i64> {
        match (self.batched, request.inputs.first()) {
            (true, Some(first)) => first.shape.first().copied(),
            _ => None,
        }
    }

    fn raised(&self, py: Python<'_>, error: PyErr) -> BackendError {
        // A process instance that died or was killed past the timeout: the call may succeed again.
        let unavailable = py.import("tritium._process").and_then(|m| m.getattr("InstanceUnavailable"));
        if let Ok(unavailable) = unavailable
            && error.is_instance(py, &unavailable)
        {
            return BackendError::failed(
                ErrorCode::Unavailable,
                format!("Failed to process the request(s) for model '{}': {}", self.model, error.value(py)),
            );
        }
        let kind = error.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
        self.failed(format!("the Python function raised {kind}: {}", error.value(py)))
    }

    /// Calls `tritium._runtime.invoke(binding, inputs, decoupled, parameters)`: the inputs as numpy arrays,
    /// the answer as `[(name, datatype, shape, bytes or list of bytes)]` for the one request (an
    /// iterator of those for a decoupled model).
    fn invoke<'py>(&self, py: Python<'py>, request: BackendRequest) -> PyResult<Bound<'py, PyAny>> {
        let inputs = PyList::empty(py);
        for tensor in request.inputs {
            let payload: Bound<'py, PyAny> = if tensor.datatype == DataType::Bytes {
                let items = tensor.byte_strings().map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
                PyList::new(py, items.into_iter().map(|item| PyBytes::new(py, item)))?.into_any()
            } else {
                let Tensor { datatype, shape, data, .. } = &tensor;
                match Buffer::new(*datatype, shape, data.clone()) {
                    Some(buffer) => Bound::new(py, buffer)?.into_any(),
                    None => {
                        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                            "input '{}': {} tensors have no numpy type",
                            tensor.name,
                            tensor.datatype.kserve_name()
                        )));
                    }
                }
            };
            let shape = PyTuple::new(py, &tensor.shape)?;
            inputs.append((tensor.name.as_str(), tensor.datatype.kserve_name(), shape, payload))?;
        }
        let parameters = PyDict::new(py);
        for (name, value) in &request.parameters {
            match value {
                ParamValue::Bool(v) => parameters.set_item(name, v)?,
                ParamValue::Int64(v) => parameters.set_item(name, v)?,
                ParamValue::String(v) => parameters.set_item(name, v)?,
                ParamValue::Double(v) => parameters.set_item(name, v)?,
                ParamValue::Uint64(v) => parameters.set_item(name, v)?,
            }
        }
        let runtime = py.import("tritium._runtime")?;
        runtime.getattr("invoke")?.call1((self.function.bind(py), inputs, self.decoupled, parameters))
    }

    /// The tensors of the answer, checked against the config: every output once, its datatype,
    /// its byte count against its shape, and its batch size against the request's.
    fn outputs(&self, py: Python<'_>, answer: Bound<'_, PyAny>, batch: Option<i64>) -> Result<Vec<Tensor>, BackendError> {
        let answer = answer
            .extract::<Vec<(String, String, Vec<i64>, Bound<'_, PyAny>)>>()
            .map_err(|e: PyErr| self.failed(format!("the answer could not be read: {}", e.value(py))))?;
        let mut tensors = Vec::with_capacity(answer.len());
        for (name, datatype, shape, payload) in answer {
            let Some(&(_, expected)) = self.outputs.iter().find(|(n, _)| *n == name) else {
                return Err(self.failed(format!("the function returned '{name}', which is not an output of the model")));
            };
            let datatype = DataType::from_kserve(&datatype).filter(|d| *d == expected).ok_or_else(|| {
                self.failed(format!("output '{name}' is {datatype}; the model declares {}", expected.kserve_name()))
            })?;
            if tensors.iter().any(|t: &Tensor| t.name == name) {
                return Err(self.failed(format!("output '{name}' was returned twice")));
            }
            if let (Some(batch), Some(first)) = (batch, shape.first())
                && *first != batch
            {
                return Err(self.failed(format!("output '{name}' has batch size {first}; the request's is {batch}")));
            }
            let tensor = if datatype == DataType::Bytes {
                let items: Vec<Vec<u8>> = payload.extract().map_err(|_| self.failed(format!("output '{name}': not bytes")))?;
                Tensor::from_byte_strings(name, shape, items)
            } else {
                let bytes: Bound<'_, PyBytes> =
                    payload.extract().map_err(|_| self.failed(format!("output '{name}': not a bytes buffer")))?;
                // The response holds the immutable `bytes` object itself: no copy.
                Tensor::new(name, datatype, shape, Bytes::from_owner(PyBackedBytes::from(bytes)))
            };
            tensor.validate().map_err(|e| self.failed(format!("output '{}': {e}", tensor.name)))?;
            tensors.push(tensor);
        }
        if let Some((missing, _)) = self.outputs.iter().find(|(n, _)| !tensors.iter().any(|t| t.name == *n)) {
            return Err(self.failed(format!("the function returned no '{missing}' output")));
        }
        Ok(tensors)
    }

    fn failed(&self, reason: String) -> BackendError {
        BackendError::failed(
            ErrorCode::Internal,
            format!("Failed to process the request(s) for model '{}': {reason}", self.model),
        )
    }
}
