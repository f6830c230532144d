#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_proto::inference::model_sequence_batching::{StrategyChoice, StrategyOldest};
use tritium_proto::inference::{
    BatchInput as ConfigBatchInput, ModelDynamicBatching, ModelInput, ModelInstanceGroup, ModelSequenceBatching,
};

use super::*;
use crate::dynamic_batcher::DynamicBatcher;
use crate::params::{RequestOptions, SequenceId};
use crate::scheduler::Scheduler;
use crate::scheduler_limits::SchedulerLimits;
use tritium_backend_api::{BackendRequest, Responder};

fn input(name: &str, ragged: bool) -> ModelInput {
    ModelInput {
        name: name.into(),
        data_type: ConfigDataType::TypeFp32 as i32,
        dims: vec![-1],
        allow_ragged_batch: ragged,
        ..Default::default()
    }
}

fn batch_input(kind: Kind, target: &str, data_type: ConfigDataType, source: &str) -> ConfigBatchInput {
    ConfigBatchInput {
        kind: kind as i32,
        target_name: vec![target.into()],
        data_type: data_type as i32,
        source_input: vec![source.into()],
    }
}

/// A model with ragged INPUT, plain MASK, and the given batch inputs made from INPUT.
fn config(batch_inputs: Vec<ConfigBatchInput>) -> ModelConfig {
    ModelConfig {
        name: "m".into(),
        max_batch_size: 8,
        input: vec![input("INPUT", true), input("MASK", false)],
        batch_input: batch_inputs,
        ..Default::default()
    }
}

fn ragged_with(kind: Kind, data_type: ConfigDataType) -> RaggedBatching {
    RaggedBatching::from_config(&config(vec![batch_input(kind, "B", data_type, "INPUT")])).unwrap()
}

/// A request whose INPUT has `shape`, its elements counting up from `start`.
fn values(shape: Vec<i64>, start: f32) -> Tensor {
    let count = shape.iter().product::<i64>() as usize;
    Tensor::from_slice("INPUT", shape, &(0..count).map(|i| start + i as f32).collect::<Vec<_>>())
}

/// The batch input `kind` makes for requests whose INPUT has `shapes`.
fn made(kind: Kind, data_type: ConfigDataType, shapes: &[Vec<i64>]) -> Tensor {
    let requests = shapes.iter().map(|shape| vec![values(shape.clone(), 0.0)]).collect();
    let inputs = ragged_with(kind, data_type).assemble(requests).unwrap();
    inputs.into_iter().find(|t| t.name == "B").unwrap()
}

#[test]
fn ragged_inputs_are_concatenated_flat_and_the_others_stacked_in_place() {
    let ragged = RaggedBatching::from_config(&config(vec![])).unwrap();
    let mask = |v: f32| Tensor::from_slice("MASK", vec![1, 2], &[v, v]);
    let a = vec![values(vec![1, 3], 0.0), mask(1.0)];
    let b = vec![values(vec![1, 2], 10.0), mask(2.0)];
    assert!(ragged.compatible(&a, &b));
    let inputs = ragged.assemble(vec![a, b]).unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!((inputs[0].name.as_str(), inputs[0].shape.as_slice()), ("INPUT", &[5][..]));
    assert_eq!(inputs[0].to_vec::<f32>().unwrap(), [0.0, 1.0, 2.0, 10.0, 11.0]);
    assert_eq!((inputs[1].name.as_str(), inputs[1].shape.as_slice()), ("MASK", &[2, 2][..]));
    assert_eq!(inputs[1].to_vec::<f32>().unwrap(), [1.0, 1.0, 2.0, 2.0]);
}

#[test]
fn a_request_alone_is_flattened_too_and_bytes_concatenate_whole() {
    let ragged = RaggedBatching::from_config(&config(vec![])).unwrap();
    let inputs = ragged.assemble(vec![vec![values(vec![2, 3], 0.0)]]).unwrap();
    assert_eq!(inputs[0].shape, [6]);
    let strings = |items: &[&str]| Tensor::from_byte_strings("INPUT", vec![1, items.len() as i64], items.iter().copied());
    let inputs = ragged.assemble(vec![vec![strings(&["a", "bc"])], vec![strings(&["", "def", "g"])]]).unwrap();
    assert_eq!(inputs[0].shape, [5]);
    assert_eq!(inputs[0].byte_strings().unwrap(), [&b"a"[..], b"bc", b"", b"def", b"g"]);
}

#[test]
fn the_ragged_batching_guide_example() {
    // Triton's docs/user_guide/ragged_batching.md: [1, 3], [1, 4] and [1, 5] become INPUT [12]
    // and an FP32 BATCH_ACCUMULATED_ELEMENT_COUNT INDEX [3] of [3, 7, 12].
    let config = ModelConfig {
        input: vec![input("INPUT", true)],
        batch_input: vec![batch_input(Kind::BatchAccumulatedElementCount, "INDEX", ConfigDataType::TypeFp32, "INPUT")],
        ..config(vec![])
    };
    let ragged = RaggedBatching::from_config(&config).unwrap();
    let requests = [3, 4, 5].map(|n| vec![values(vec![1, n], 0.0)]).to_vec();
    let inputs = ragged.assemble(requests).unwrap();
    assert_eq!(inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["INPUT", "INDEX"]);
    assert_eq!(inputs[0].shape, [12]);
    assert_eq!((inputs[1].datatype, inputs[1].shape.as_slice()), (DataType::Fp32, &[3][..]));
    assert_eq!(inputs[1].to_vec::<f32>().unwrap(), [3.0, 7.0, 12.0]);
}

#[test]
fn element_counts_are_per_request_and_count_every_row() {
    // The middle request has two rows: 2 x 2 elements.
    let shapes = [vec![1, 3], vec![2, 2], vec![1, 4]];
    let int32 = ConfigDataType::TypeInt32;
    let count = made(Kind::BatchElementCount, int32, &shapes);
    assert_eq!((count.datatype, count.shape.as_slice()), (DataType::Int32, &[3][..]));
    assert_eq!(count.to_vec::<i32>().unwrap(), [3, 4, 4]);
    let accumulated = made(Kind::BatchAccumulatedElementCount, int32, &shapes);
    assert_eq!((accumulated.shape.as_slice(), accumulated.to_vec::<i32>().unwrap()), (&[3][..], vec![3, 7, 11]));
    let with_zero = made(Kind::BatchAccumulatedElementCountWithZero, int32, &shapes);
    assert_eq!((with_zero.shape.as_slice(), with_zero.to_vec::<i32>().unwrap()), (&[4][..], vec![0, 3, 7, 11]));
    let fp32 = made(Kind::BatchElementCount, ConfigDataType::TypeFp32, &shapes);
    assert_eq!((fp32.datatype, fp32.to_vec::<f32>().unwrap()), (DataType::Fp32, vec![3.0, 4.0, 4.0]));
}

#[test]
fn the_largest_element_count_is_a_shape() {
    let max = made(Kind::BatchMaxElementCountAsShape, ConfigDataType::TypeInt32, &[vec![1, 3], vec![2, 3], vec![1, 5]]);
    assert_eq!(max.shape, [6]);
    assert_eq!(max.to_vec::<i32>().unwrap(), [0; 6]);
}

#[test]
fn item_shapes_have_one_row_per_batch_item() {
    // model_config.proto's example: a batch-2 input of shape [3, 1] and a batch-1 input of shape
    // [2, 2] give [[3, 1], [3, 1], [2, 2]].
    let config = ModelConfig { input: vec![ModelInput { dims: vec![-1, -1], ..input("INPUT", true) }], ..config(vec![]) };
    for (kind, shape) in [(Kind::BatchItemShape, vec![3, 2]), (Kind::BatchItemShapeFlatten, vec![6])] {
        let config =
            ModelConfig { batch_input: vec![batch_input(kind, "B", ConfigDataType::TypeInt32, "INPUT")], ..config.clone() };
        let ragged = RaggedBatching::from_config(&config).unwrap();
        let inputs = ragged.assemble(vec![vec![values(vec![2, 3, 1], 0.0)], vec![values(vec![1, 2, 2], 0.0)]]).unwrap();
        assert_eq!(inputs[0].shape, [10], "6 + 4 elements");
        assert_eq!(inputs[1].shape, shape, "{kind:?}");
        assert_eq!(inputs[1].to_vec::<i32>().unwrap(), [3, 1, 3, 1, 2, 2], "{kind:?}");
    }
}

#[test]
fn every_target_gets_the_batch_input() {
    let mut entry = batch_input(Kind::BatchElementCount, "B", ConfigDataType::TypeInt32, "INPUT");
    entry.target_name.push("C".into());
    let ragged = RaggedBatching::from_config(&config(vec![entry])).unwrap();
    let inputs = ragged.assemble(vec![vec![values(vec![1, 2], 0.0)]]).unwrap();
    assert_eq!(inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["INPUT", "B", "C"]);
    assert_eq!(inputs[1].data, inputs[2].data);
}

#[test]
fn a_batch_input_without_its_source_in_the_request_is_an_error() {
    let ragged = ragged_with(Kind::BatchElementCount, ConfigDataType::TypeInt32);
    let error = ragged.assemble(vec![vec![Tensor::from_slice("MASK", vec![1, 1], &[0.0f32])]]).unwrap_err();
    assert_eq!(error, "batch input 'B' is made from input 'INPUT', which the request does not have");
}

#[test]
fn batch_inputs_that_cannot_be_made_fail_the_load() {
    let error = |entry: ConfigBatchInput| RaggedBatching::from_config(&config(vec![entry])).unwrap_err();
    let int32 = ConfigDataType::TypeInt32;
    assert_eq!(error(batch_input(Kind::BatchElementCount, "B", int32, "NOPE")), "unknown source input name 'NOPE'");
    assert_eq!(
        error(batch_input(Kind::BatchElementCount, "B", ConfigDataType::TypeInt64, "INPUT")),
        "batch input data type must be TYPE_INT32 or TYPE_FP32"
    );
    let mut two_sources = batch_input(Kind::BatchItemShape, "B", int32, "INPUT");
    two_sources.source_input.push("MASK".into());
    assert_eq!(error(two_sources), "batch input kind 'BATCH_ITEM_SHAPE' expects 1 source input, got 2");
    let no_target = ConfigBatchInput { target_name: vec![], ..batch_input(Kind::BatchElementCount, "B", int32, "INPUT") };
    assert_eq!(error(no_target), "batch input kind 'BATCH_ELEMENT_COUNT' expects at least 1 target name, got 0");
    assert_eq!(
        error(batch_input(Kind::BatchElementCount, "MASK", int32, "INPUT")),
        "batch input target name 'MASK' is also an input of the model configuration"
    );
    let unknown = ConfigBatchInput { kind: 42, ..batch_input(Kind::BatchElementCount, "B", int32, "INPUT") };
    assert_eq!(error(unknown), "unknown batch input kind '42'");
}

#[test]
fn a_model_without_ragged_inputs_keeps_the_plain_rules() {
    let ragged = RaggedBatching::from_config(&ModelConfig { input: vec![input("INPUT", false)], ..config(vec![]) }).unwrap();
    assert!(ragged.is_empty());
    assert!(!ragged.compatible(&[values(vec![1, 3], 0.0)], &[values(vec![1, 2], 0.0)]));
    let inputs = ragged.assemble(vec![vec![values(vec![1, 2], 0.0)], vec![values(vec![1, 2], 5.0)]]).unwrap();
    assert_eq!(inputs[0].shape, [2, 2]);
}

/// SUM = the sum of each request's INPUT, found through INDEX (accumulated element counts);
/// records the INPUT shape of every call.
#[derive(Default)]
struct SegmentSum {
    calls: Mutex<Vec<Vec<i64>>>,
    lists: bool,
}

#[async_trait]
impl Backend for SegmentSum {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input("INPUT")?;
        self.calls.lock().push(input.shape.clone());
        let values = input.to_vec::<f32>()?;
        let Ok(ends) = request.input("INDEX").and_then(|t| Ok(t.to_vec::<i32>()?)) else {
            // As a list backend gets it: one request, with its batch dimension.
            let sum = values.iter().sum::<f32>();
            return responder.send(vec![Tensor::from_slice("SUM", vec![1, 1], &[sum])]).await;
        };
        let mut start = 0;
        let sums: Vec<f32> = ends
            .iter()
            .map(|&end| {
                let sum = values[start..end as usize].iter().sum();
                start = end as usize;
                sum
            })
            .collect();
        responder.send(vec![Tensor::from_slice("SUM", vec![sums.len() as i64, 1], &sums)]).await
    }

    fn takes_request_lists(&self) -> bool {
        self.lists
    }
}

fn segment_config() -> ModelConfig {
    ModelConfig {
        name: "segments".into(),
        max_batch_size: 4,
        input: vec![input("INPUT", true)],
        batch_input: vec![batch_input(Kind::BatchAccumulatedElementCount, "INDEX", ConfigDataType::TypeInt32, "INPUT")],
        instance_group: vec![ModelInstanceGroup { count: 1, ..Default::default() }],
        scheduling_choice: Some(SchedulingChoice::DynamicBatching(ModelDynamicBatching {
            max_queue_delay_microseconds: 60_000_000,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A request whose ragged INPUT holds `length` values counting up from `length`.
fn segment_request(length: i64) -> BackendRequest {
    BackendRequest {
        inputs: vec![values(vec![1, length], length as f32)],
        parameters: vec![],
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    }
}

async fn sums_through_the_batcher(backend: Arc<SegmentSum>) -> Vec<f32> {
    let config = segment_config();
    let ragged = Arc::new(RaggedBatching::from_config(&config).unwrap());
    let dynamic: Arc<dyn Backend> = backend;
    let batcher = Arc::new(DynamicBatcher::for_config(&config, &dynamic, &ragged, 4096).unwrap().unwrap());
    let tasks: Vec<_> = [3i64, 1, 5, 2]
        .into_iter()
        .map(|length| {
            let batcher = Arc::clone(&batcher);
            let request = segment_request(length);
            tokio::spawn(async move { batcher.submit(request, 1, &RequestOptions::default()).await })
        })
        .collect();
    let mut sums = Vec::new();
    for task in tasks {
        let outputs = task.await.unwrap().unwrap().outputs.unwrap();
        assert_eq!(outputs[0].shape, [1, 1]);
        sums.extend(outputs[0].to_vec::<f32>().unwrap());
    }
    sums
}

/// The sum of `length` values counting up from `length`.
fn expected_sum(length: i64) -> f32 {
    (0..length).map(|i| (length + i) as f32).sum()
}

#[tokio::test]
async fn requests_of_other_lengths_share_a_batch_and_get_their_own_sums() {
    let backend = Arc::new(SegmentSum::default());
    let sums = sums_through_the_batcher(Arc::clone(&backend)).await;
    assert_eq!(sums, [3, 1, 5, 2].map(expected_sum));
    assert_eq!(*backend.calls.lock(), [vec![11]], "one call with 3 + 1 + 5 + 2 elements");
}

#[tokio::test]
async fn a_backend_that_takes_lists_gets_each_request_as_it_came() {
    let backend = Arc::new(SegmentSum { lists: true, ..Default::default() });
    let sums = sums_through_the_batcher(Arc::clone(&backend)).await;
    assert_eq!(sums, [3, 1, 5, 2].map(expected_sum));
    assert_eq!(*backend.calls.lock(), [vec![1, 3], vec![1, 1], vec![1, 5], vec![1, 2]]);
}

#[tokio::test]
async fn sequences_of_other_lengths_share_a_sequence_batch_and_get_their_own_sums() {
    let strategy = StrategyChoice::Oldest(StrategyOldest {
        max_candidate_sequences: 8,
        max_queue_delay_microseconds: 60_000_000,
        ..Default::default()
    });
    let batching = ModelSequenceBatching { strategy_choice: Some(strategy), ..Default::default() };
    let config = ModelConfig { scheduling_choice: Some(SchedulingChoice::SequenceBatching(batching)), ..segment_config() };
    let ragged = Arc::new(RaggedBatching::from_config(&config).unwrap());
    let backend = Arc::new(SegmentSum::default());
    let dynamic: Arc<dyn Backend> = backend.clone();
    let scheduler = Arc::new(Scheduler::for_config(&config, &dynamic, &ragged, None, SchedulerLimits::default()).unwrap());
    let tasks: Vec<_> = [3i64, 1, 5, 2]
        .into_iter()
        .enumerate()
        .map(|(index, length)| {
            let (scheduler, backend) = (Arc::clone(&scheduler), Arc::clone(&dynamic));
            let request = segment_request(length);
            let options = RequestOptions {
                sequence_id: Some(SequenceId::Number(index as u64 + 1)),
                sequence_start: true,
                sequence_end: true,
                ..Default::default()
            };
            tokio::spawn(async move { scheduler.run(backend.as_ref(), request, 1, &options).await })
        })
        .collect();
    let mut sums = Vec::new();
    for task in tasks {
        sums.extend(task.await.unwrap().unwrap().outputs.unwrap()[0].to_vec::<f32>().unwrap());
    }
    assert_eq!(sums, [3, 1, 5, 2].map(expected_sum));
    assert_eq!(*backend.calls.lock(), [vec![11]], "one call: the batch of four sequences, 3 + 1 + 5 + 2 elements");
}

fn output(name: &str, data_type: ConfigDataType, dims: Vec<i64>) -> tritium_proto::inference::ModelOutput {
    tritium_proto::inference::ModelOutput { name: name.into(), data_type: data_type as i32, dims, ..Default::default() }
}

fn scatter_output(target: &str, source: &str) -> tritium_proto::inference::BatchOutput {
    tritium_proto::inference::BatchOutput {
        target_name: vec![target.into()],
        kind: OutputKind::BatchScatterWithInputShape as i32,
        source_input: vec![source.into()],
    }
}

/// Ragged INPUT [-1]; OUT [-1] scattered by INPUT's shape; ROWS [1] one row per batch item.
fn scatter_config() -> ModelConfig {
    ModelConfig {
        output: vec![output("OUT", ConfigDataType::TypeFp32, vec![-1]), output("ROWS", ConfigDataType::TypeInt32, vec![1])],
        batch_output: vec![scatter_output("OUT", "INPUT")],
        ..config(vec![])
    }
}

#[test]
fn a_scattered_output_goes_back_in_the_shape_of_each_requests_input() {
    let ragged = RaggedBatching::from_config(&scatter_config()).unwrap();
    let requests = vec![vec![values(vec![1, 3], 0.0)], vec![values(vec![1, 2], 10.0)]];
    let scatter = ragged.scatter(&requests);
    let flat = ragged.assemble(requests).unwrap().remove(0);
    // What a model that doubles its ragged input and counts its rows would answer.
    let doubled: Vec<f32> = flat.to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
    let outputs = vec![Tensor::from_slice("ROWS", vec![2, 1], &[1i32, 1]), Tensor::from_slice("OUT", vec![5], &doubled)];
    let parts = ragged.split(outputs, &[1, 1], &scatter).unwrap();
    assert_eq!(parts[0].iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["ROWS", "OUT"], "outputs keep their order");
    assert_eq!((parts[0][1].shape.as_slice(), parts[0][1].to_vec::<f32>().unwrap()), (&[1, 3][..], vec![0.0, 2.0, 4.0]));
    assert_eq!((parts[1][1].shape.as_slice(), parts[1][1].to_vec::<f32>().unwrap()), (&[1, 2][..], vec![20.0, 22.0]));
    assert_eq!(parts[1][0].to_vec::<i32>().unwrap(), [1]);

    let short = vec![Tensor::from_slice("ROWS", vec![2, 1], &[1i32, 1]), Tensor::from_slice("OUT", vec![4], &doubled[..4])];
    let error = ragged.split(short, &[1, 1], &scatter).unwrap_err();
    assert_eq!(error, "the backend's output 'OUT' holds 16 bytes, the requests' input shapes need at least 20");
}

/// OUT = INPUT as the model gets it (flat); no other output.
struct Echo;

#[async_trait]
impl Backend for Echo {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input("INPUT")?;
        responder.send(vec![Tensor { name: "OUT".into(), ..input.clone() }]).await
    }
}

#[tokio::test]
async fn a_request_alone_gets_its_scattered_output_in_its_own_shape() {
    let config = ModelConfig { output: vec![output("OUT", ConfigDataType::TypeFp32, vec![-1])], ..scatter_config() };
    let ragged = RaggedBatching::from_config(&config).unwrap();
    let request = BackendRequest {
        inputs: vec![values(vec![1, 4], 1.0)],
        parameters: vec![],
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    };
    let outputs = ragged.run_one(&Echo, request).await.unwrap();
    assert_eq!(outputs[0].shape, [1, 4], "the model answered [4]");
    assert_eq!(outputs[0].to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn batch_outputs_that_cannot_be_scattered_fail_the_load() {
    let error = |batch_output: Vec<tritium_proto::inference::BatchOutput>, outputs| {
        let config = ModelConfig { batch_output, output: outputs, ..scatter_config() };
        RaggedBatching::from_config(&config).unwrap_err()
    };
    let out = || vec![output("OUT", ConfigDataType::TypeFp32, vec![-1])];
    assert_eq!(error(vec![scatter_output("NOPE", "INPUT")], out()), "unknown target output name 'NOPE'");
    assert_eq!(error(vec![scatter_output("OUT", "NOPE")], out()), "unknown source input name 'NOPE'");
    assert_eq!(
        error(vec![scatter_output("OUT", "INPUT"), scatter_output("OUT", "MASK")], out()),
        "target output name 'OUT' can only be specified once"
    );
    let mut two = scatter_output("OUT", "INPUT");
    two.source_input.push("MASK".into());
    assert_eq!(error(vec![two], out()), "batch output kind 'BATCH_SCATTER_WITH_INPUT_SHAPE' expects 1 source input, got 2");
    assert_eq!(
        error(vec![scatter_output("OUT", "INPUT")], vec![output("OUT", ConfigDataType::TypeString, vec![-1])]),
        "batch output target 'OUT' must have a fixed-size data type to be scattered"
    );
}
