//! Triton's `model_warmup`: sample requests (zeros, random data or a file from the model's
//! `warmup/` folder) run through a freshly built backend before its version is served, so the
//! first client does not pay for lazy initialisation. A failing sample fails the load.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tritium_proto::inference::model_warmup::input::InputDataType;
use tritium_proto::inference::{ModelConfig, ModelWarmup, model_warmup};
use tritium_tensor::{DataType, Tensor};

use crate::ragged::RaggedBatching;
use tritium_backend_api::{Backend, BackendError, BackendRequest, Responder};
use tritium_repository::model_files::read_model_file;

/// Largest sample tensor a warmup may build: a typo in `dims` must not exhaust memory at load.
const MAX_SAMPLE_BYTES: usize = 256 << 20;

/// Runs every warmup sample of `config` through `backend`, `count` times each (at least once),
/// laid out as `ragged` lays out a request that runs on its own.
pub fn run(config: &ModelConfig, model_dir: Option<&Path>, backend: &dyn Backend, ragged: &RaggedBatching) -> Result<(), String> {
    for sample in config.model_warmup.iter().filter(|s| s.batch_size > 0) {
        let failed = |why: String| format!("failed to run warmup sample '{}': {why}; ", sample.name);
        let inputs = sample_inputs(config, sample, model_dir).map_err(failed)?;
        let inputs = ragged.for_one(backend, inputs).map_err(|e| failed(e.to_string()))?;
        // A batching model gets the sample as one batch; any other gets batch_size requests.
        let requests = if config.max_batch_size > 0 { 1 } else { sample.batch_size };
        for _ in 0..sample.count.max(1) * requests {
            let request = BackendRequest {
                inputs: inputs.clone(),
                parameters: Default::default(),
                cancel: None,
                id: String::new(),
                requested_outputs: Vec::new(),
                trace: None,
            };
            let mut responder = Responder::single();
            match block_on(backend.execute(request, &mut responder)) {
                // A decoupled model answering more than once has run; only the first answer is kept.
                Ok(()) | Err(BackendError::ExtraResponse) => {}
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }
    Ok(())
}

fn sample_inputs(config: &ModelConfig, sample: &ModelWarmup, model_dir: Option<&Path>) -> Result<Vec<Tensor>, String> {
    let batching = config.max_batch_size > 0;
    if batching && sample.batch_size as i32 > config.max_batch_size {
        return Err(format!("batch_size {} is larger than max_batch_size {}", sample.batch_size, config.max_batch_size));
    }
    let mut names: Vec<&String> = sample.inputs.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let input = &sample.inputs[name];
            let mut shape = Vec::with_capacity(input.dims.len() + 1);
            if batching {
                shape.push(i64::from(sample.batch_size));
            }
            shape.extend_from_slice(&input.dims);
            sample_tensor(name, input, shape, model_dir)
        })
        .collect()
}

fn sample_tensor(name: &str, input: &model_warmup::Input, shape: Vec<i64>, model_dir: Option<&Path>) -> Result<Tensor, String> {
    if input.input_data_type.is_none() {
        return Err(format!("warmup setting expects input '{name}' to have input_data_type set"));
    }
    let datatype =
        DataType::from_config(input.data_type).ok_or_else(|| format!("input '{name}' has an unsupported data_type"))?;
    if shape.iter().any(|&d| d < 0) {
        return Err(format!("warmup setting expects all variable-size dimensions are specified for input '{name}'"));
    }
    let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    let too_large = || format!("input '{name}' of shape {shape:?} is larger than {MAX_SAMPLE_BYTES} bytes");
    let elements = elements.ok_or_else(too_large)?;
    let data = match (&input.input_data_type, datatype) {
        (Some(InputDataType::InputDataFile(file)), _) => read_sample_file(model_dir, file, datatype, elements)?,
        // Strings get empty elements whatever the kind: random text means nothing to a model.
        (_, DataType::Bytes) => Bytes::from(vec![0u8; elements.checked_mul(4).ok_or_else(too_large)?]),
        (kind, _) => {
            let size = elements.checked_mul(datatype.element_size().unwrap_or(1)).filter(|&s| s <= MAX_SAMPLE_BYTES);
            let mut data = vec![0u8; size.ok_or_else(too_large)?];
            if matches!(kind, Some(InputDataType::RandomData(true))) {
                fill_random(&mut data, datatype);
            }
            Bytes::from(data)
        }
    };
    Ok(Tensor::new(name, datatype, shape, data))
}

/// Random bytes, kept valid for the type: booleans 0 or 1, floats small and finite.
fn fill_random(data: &mut [u8], datatype: DataType) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    match datatype {
        DataType::Bool => data.iter_mut().for_each(|b| *b = rng.random_range(0..=1)),
        DataType::Fp32 => data.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&rng.random::<f32>().to_le_bytes())),
        DataType::Fp64 => data.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&rng.random::<f64>().to_le_bytes())),
        DataType::Fp16 => {
            data.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::f16::from_f32(rng.random()).to_le_bytes()))
        }
        DataType::Bf16 => {
            data.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::bf16::from_f32(rng.random()).to_le_bytes()))
        }
        _ => rng.fill(data),
    }
}

/// `warmup/<file>` of the model folder, which must hold exactly the tensor's bytes (for BYTES,
/// the length-prefixed elements); read with a bound, never echoed in errors.
fn read_sample_file(model_dir: Option<&Path>, file: &str, datatype: DataType, elements: usize) -> Result<Bytes, String> {
    let data = read_model_file(model_dir, "warmup", file, MAX_SAMPLE_BYTES)?;
    let tensor = Tensor::new("sample", datatype, vec![elements as i64], data);
    tensor.validate().map_err(|e| format!("'{file}' does not hold the input's {elements} elements: {e}"))?;
    Ok(tensor.data)
}

/// Drives a future to completion on this (blocking) thread: loads run off the async runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use async_trait::async_trait;
    use tritium_proto::inference::DataType as ConfigDataType;

    use super::*;

    /// Records the shapes it saw; fails on a NaN.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<(String, Vec<i64>, Bytes)>>);

    #[async_trait]
    impl Backend for Recorder {
        async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
            for input in &request.inputs {
                self.0.lock().push((input.name.clone(), input.shape.clone(), input.data.clone()));
            }
            responder.send(vec![]).await
        }
    }

    fn input(data_type: ConfigDataType, dims: Vec<i64>, kind: InputDataType) -> model_warmup::Input {
        model_warmup::Input { data_type: data_type as i32, dims, input_data_type: Some(kind) }
    }

    fn config(max_batch_size: i32, sample: ModelWarmup) -> ModelConfig {
        ModelConfig { name: "m".into(), max_batch_size, model_warmup: vec![sample], ..Default::default() }
    }

    #[test]
    fn samples_run_count_times_with_the_batch_dimension_in_front() {
        let sample = ModelWarmup {
            name: "zeros".into(),
            batch_size: 3,
            count: 2,
            inputs: [("X".to_string(), input(ConfigDataType::TypeFp32, vec![2], InputDataType::ZeroData(true)))].into(),
        };
        let backend = Recorder::default();
        run(&config(4, sample), None, &backend, &RaggedBatching::default()).unwrap();
        let seen = backend.0.lock();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, [3, 2]);
        assert!(seen[0].2.iter().all(|&b| b == 0));
    }

    #[test]
    fn random_booleans_stay_booleans_and_strings_are_empty() {
        let sample = ModelWarmup {
            name: "random".into(),
            batch_size: 1,
            count: 1,
            inputs: [
                ("B".to_string(), input(ConfigDataType::TypeBool, vec![64], InputDataType::RandomData(true))),
                ("S".to_string(), input(ConfigDataType::TypeString, vec![2], InputDataType::RandomData(true))),
            ]
            .into(),
        };
        let backend = Recorder::default();
        run(&config(0, sample), None, &backend, &RaggedBatching::default()).unwrap();
        let seen = backend.0.lock();
        assert_eq!(seen[0].1, [64], "a model that does not batch gets the dims as they are");
        assert!(seen[0].2.iter().all(|&b| b <= 1));
        assert_eq!(&seen[1].2[..], [0u8; 8]);
    }

    #[test]
    fn files_come_from_the_warmup_folder_and_must_hold_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("warmup")).unwrap();
        std::fs::write(dir.path().join("warmup").join("x.bin"), 7i32.to_le_bytes().repeat(2)).unwrap();
        let sample = |file: &str, dims: Vec<i64>| ModelWarmup {
            name: "file".into(),
            batch_size: 1,
            count: 1,
            inputs: [("X".to_string(), input(ConfigDataType::TypeInt32, dims, InputDataType::InputDataFile(file.into())))].into(),
        };
        let backend = Recorder::default();
        run(&config(0, sample("x.bin", vec![2])), Some(dir.path()), &backend, &RaggedBatching::default()).unwrap();
        assert_eq!(backend.0.lock()[0].2, 7i32.to_le_bytes().repeat(2));
        let short =
            run(&config(0, sample("x.bin", vec![3])), Some(dir.path()), &backend, &RaggedBatching::default()).unwrap_err();
        assert!(short.contains("does not hold the input's 3 elements"), "{short}");
        let missing =
            run(&config(0, sample("none.bin", vec![2])), Some(dir.path()), &backend, &RaggedBatching::default()).unwrap_err();
        assert!(missing.contains("'none.bin' does not exist"), "{missing}");
    }

    #[test]
    fn impossible_samples_fail_the_load_with_the_samples_name() {
        let huge = ModelWarmup {
            name: "huge".into(),
            batch_size: 1,
            count: 1,
            inputs: [("X".to_string(), input(ConfigDataType::TypeFp32, vec![1 << 40], InputDataType::ZeroData(true)))].into(),
        };
        let error = run(&config(0, huge), None, &Recorder::default(), &RaggedBatching::default()).unwrap_err();
        assert!(error.starts_with("failed to run warmup sample 'huge': input 'X'"), "{error}");
        let too_big_batch = ModelWarmup { name: "batch".into(), batch_size: 9, count: 1, inputs: Default::default() };
        let error = run(&config(8, too_big_batch), None, &Recorder::default(), &RaggedBatching::default()).unwrap_err();
        assert!(error.contains("batch_size 9 is larger than max_batch_size 8"), "{error}");
        let skipped = ModelWarmup { name: "none".into(), batch_size: 0, count: 1, inputs: Default::default() };
        let backend = Recorder::default();
        run(&config(8, skipped), None, &backend, &RaggedBatching::default()).unwrap();
        assert!(backend.0.lock().is_empty(), "a sample of batch size 0 is skipped, as in Triton");
    }
}
