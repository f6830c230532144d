#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_proto::inference::model_sequence_batching::control::Kind;
use tritium_proto::inference::model_sequence_batching::{
    Control, ControlInput, InitialState, State, StrategyChoice, StrategyDirect, StrategyOldest, initial_state::StateData,
};
use tritium_proto::inference::{DataType as ConfigType, ModelInstanceGroup};

use super::*;
use tritium_backend_api::Responder;

/// What one row of one backend call looked like.
#[derive(Debug, Clone, PartialEq)]
struct SeenRow {
    start: i32,
    end: i32,
    ready: i32,
    corrid: u64,
    input: i32,
    state: i32,
}

/// An accumulator: OUTPUT = ACC_IN + INPUT, ACC_OUT the same; records every call's rows; with
/// `hold`, waits for a notification before answering.
#[derive(Default)]
struct Accumulator {
    calls: Mutex<Vec<Vec<SeenRow>>>,
    hold: Option<(Notify, Notify)>,
}

#[async_trait]
impl Backend for Accumulator {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let column = |name: &str| request.input(name).and_then(|t| Ok(t.to_vec::<i32>()?));
        let (input, state, start, end, ready) =
            (column("INPUT")?, column("ACC_IN")?, column("START")?, column("END")?, column("READY")?);
        let corrid = request.input("CORRID")?.to_vec::<u64>()?;
        let rows = (0..input.len())
            .map(|i| SeenRow {
                start: start[i],
                end: end[i],
                ready: ready[i],
                corrid: corrid[i],
                input: input[i],
                state: state[i],
            })
            .collect();
        self.calls.lock().push(rows);
        if let Some((started, proceed)) = &self.hold {
            started.notify_one();
            proceed.notified().await;
        }
        let sums: Vec<i32> = input.iter().zip(&state).map(|(a, b)| a + b).collect();
        let shape = request.input("INPUT")?.shape.clone();
        responder
            .send(vec![Tensor::from_slice("OUTPUT", shape.clone(), &sums), Tensor::from_slice("ACC_OUT", shape, &sums)])
            .await
    }
}

impl Accumulator {
    fn calls(&self) -> Vec<Vec<SeenRow>> {
        self.calls.lock().clone()
    }
}

fn flag(name: &str, kind: Kind) -> ControlInput {
    ControlInput {
        name: name.into(),
        control: vec![Control { kind: kind as i32, int32_false_true: vec![0, 1], ..Default::default() }],
    }
}

fn config(strategy: StrategyChoice, max_batch_size: i32, idle_us: u64) -> ModelConfig {
    ModelConfig {
        name: "acc".into(),
        max_batch_size,
        instance_group: vec![ModelInstanceGroup { count: 1, ..Default::default() }],
        scheduling_choice: Some(SchedulingChoice::SequenceBatching(ModelSequenceBatching {
            max_sequence_idle_microseconds: idle_us,
            control_input: vec![
                flag("START", Kind::ControlSequenceStart),
                flag("END", Kind::ControlSequenceEnd),
                flag("READY", Kind::ControlSequenceReady),
                ControlInput {
                    name: "CORRID".into(),
                    control: vec![Control {
                        kind: Kind::ControlSequenceCorrid as i32,
                        data_type: ConfigType::TypeUint64 as i32,
                        ..Default::default()
                    }],
                },
            ],
            state: vec![State {
                input_name: "ACC_IN".into(),
                output_name: "ACC_OUT".into(),
                data_type: ConfigType::TypeInt32 as i32,
                dims: vec![1],
                initial_state: vec![InitialState {
                    data_type: ConfigType::TypeInt32 as i32,
                    dims: vec![1],
                    state_data: Some(StateData::ZeroData(true)),
                    name: "zero".into(),
                }],
                ..Default::default()
            }],
            strategy_choice: Some(strategy),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn direct() -> StrategyChoice {
    StrategyChoice::Direct(StrategyDirect::default())
}

fn oldest(candidates: i32) -> StrategyChoice {
    StrategyChoice::Oldest(StrategyOldest { max_candidate_sequences: candidates, ..Default::default() })
}

fn batcher(config: &ModelConfig, backend: &Arc<Accumulator>, limits: SchedulerLimits) -> Arc<SequenceBatcher> {
    let Some(SchedulingChoice::SequenceBatching(batching)) = &config.scheduling_choice else { unreachable!() };
    let dynamic: Arc<dyn Backend> = backend.clone();
    let no_files = |_: &str, _: usize| Err("no files".to_string());
    Arc::new(SequenceBatcher::for_config(config, batching, &dynamic, &Arc::default(), limits, &no_files).unwrap())
}

#[derive(Clone, Copy, Default)]
struct Step {
    id: u64,
    value: i32,
    start: bool,
    end: bool,
}

fn step(id: u64, value: i32) -> Step {
    Step { id, value, ..Default::default() }
}

impl Step {
    fn start(self) -> Step {
        Step { start: true, ..self }
    }
    fn end(self) -> Step {
        Step { end: true, ..self }
    }
}

fn send(batcher: &Arc<SequenceBatcher>, step: Step) -> JoinHandle<BatchAnswer> {
    let batcher = Arc::clone(batcher);
    let shape = if batcher.settings.batched { vec![1, 1] } else { vec![1] };
    let request = BackendRequest {
        inputs: vec![Tensor::from_slice("INPUT", shape, &[step.value])],
        parameters: vec![],
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    };
    let options = RequestOptions {
        sequence_id: (step.id != 0).then_some(SequenceId::Number(step.id)),
        sequence_start: step.start,
        sequence_end: step.end,
        ..Default::default()
    };
    tokio::spawn(async move { batcher.submit(request, 1, &options).await })
}

async fn output(task: JoinHandle<BatchAnswer>) -> Vec<Tensor> {
    task.await.unwrap().unwrap().outputs.unwrap()
}

async fn value(task: JoinHandle<BatchAnswer>) -> i32 {
    let outputs = output(task).await;
    assert_eq!(outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["OUTPUT"], "the state output is the server's");
    outputs[0].to_vec::<i32>().unwrap()[0]
}

/// The error of a request refused before it ran, or of a run that failed.
async fn refusal(task: JoinHandle<BatchAnswer>) -> (ErrorCode, String) {
    let error = match task.await.unwrap() {
        Err(error) => error,
        Ok(share) => share.outputs.unwrap_err(),
    };
    (error.code(), error.to_string())
}

#[tokio::test]
async fn a_sequence_accumulates_in_state_the_batcher_keeps() {
    let backend = Arc::new(Accumulator::default());
    let batcher = batcher(&config(direct(), 4, 0), &backend, SchedulerLimits::default());
    assert_eq!(value(send(&batcher, step(5, 10).start())).await, 10);
    assert_eq!(value(send(&batcher, step(5, 3))).await, 13);
    assert_eq!(value(send(&batcher, step(5, 4).end())).await, 17);
    let rows: Vec<SeenRow> = backend.calls().into_iter().flatten().collect();
    let controls: Vec<(i32, i32, i32, u64)> = rows.iter().map(|r| (r.start, r.end, r.ready, r.corrid)).collect();
    assert_eq!(controls, [(1, 0, 1, 5), (0, 0, 1, 5), (0, 1, 1, 5)]);
    let (message_code, message) = refusal(send(&batcher, step(5, 1))).await;
    assert_eq!(message_code, ErrorCode::InvalidArg);
    assert_eq!(
        message,
        "inference request for sequence 5 to model 'acc' must specify the START flag on the first request of the sequence"
    );
    assert_eq!(value(send(&batcher, step(5, 7).start())).await, 7, "a new START begins from the initial state");
}

#[tokio::test]
async fn a_start_on_a_live_sequence_restarts_it() {
    let backend = Arc::new(Accumulator::default());
    let batcher = batcher(&config(oldest(4), 4, 0), &backend, SchedulerLimits::default());
    assert_eq!(value(send(&batcher, step(9, 10).start())).await, 10);
    assert_eq!(value(send(&batcher, step(9, 1).start())).await, 1);
}

#[tokio::test]
async fn requests_the_sequence_rules_refuse_get_tritons_words() {
    let backend = Arc::new(Accumulator::default());
    let batcher = batcher(&config(direct(), 4, 0), &backend, SchedulerLimits::default());
    assert_eq!(
        refusal(send(&batcher, step(0, 1).start())).await,
        (ErrorCode::InvalidArg, "inference request to model 'acc' must specify a non-zero or non-empty correlation ID".into())
    );
    let two_rows = BackendRequest {
        inputs: vec![Tensor::from_slice("INPUT", vec![2, 1], &[1, 2])],
        parameters: vec![],
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    };
    let error = batcher.submit(two_rows, 2, &RequestOptions::default()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "inference request to model 'acc' must specify batch-size 1 due to requirements of sequence batcher"
    );
    let text = RequestOptions { sequence_id: Some(SequenceId::Text("abc".into())), sequence_start: true, ..Default::default() };
    let one = BackendRequest {
        inputs: vec![Tensor::from_slice("INPUT", vec![1, 1], &[1])],
        parameters: vec![],
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    };
    let error = batcher.submit(one, 1, &text).await.unwrap_err();
    assert!(error.to_string().contains("string sequence id 'abc'"), "{error}");
    assert!(backend.calls().is_empty(), "nothing refused reached the backend");
}

#[tokio::test]
async fn interleaved_sequences_share_batches_with_oldest() {
    let backend = Arc::new(Accumulator { hold: Some((Notify::new(), Notify::new())), ..Default::default() });
    let batcher = batcher(&config(oldest(4), 4, 0), &backend, SchedulerLimits::default());
    let (started, proceed) = backend.hold.as_ref().unwrap();
    // Sequence 1 runs alone while 2 and 3 start and 1 queues its next request.
    let first = send(&batcher, step(1, 1).start());
    started.notified().await;
    let queued = [send(&batcher, step(2, 20).start()), send(&batcher, step(3, 300).start()), send(&batcher, step(1, 2))];
    while batcher.queued.load(Ordering::Acquire) < 3 {
        tokio::task::yield_now().await;
    }
    proceed.notify_one();
    assert_eq!(value(first).await, 1);
    started.notified().await;
    proceed.notify_one();
    let [two, three, one_again] = queued;
    assert_eq!((value(two).await, value(three).await, value(one_again).await), (20, 300, 3));
    let calls = backend.calls();
    assert_eq!(calls.len(), 2);
    let corrids: Vec<u64> = calls[1].iter().map(|r| r.corrid).collect();
    assert_eq!(corrids, [2, 3, 1], "one batch, oldest requests first, one per sequence");
}

#[tokio::test]
async fn direct_batches_keep_each_sequence_in_its_slot_with_empty_rows_not_ready() {
    let backend = Arc::new(Accumulator { hold: Some((Notify::new(), Notify::new())), ..Default::default() });
    let batcher = batcher(&config(direct(), 4, 0), &backend, SchedulerLimits::default());
    let (started, proceed) = backend.hold.as_ref().unwrap();
    let first = send(&batcher, step(1, 1).start());
    started.notified().await;
    let second = send(&batcher, step(2, 20).start());
    proceed.notify_one();
    assert_eq!(value(first).await, 1);
    started.notified().await;
    proceed.notify_one();
    assert_eq!(value(second).await, 20);
    let calls = backend.calls();
    let slot_rows: Vec<(i32, u64)> = calls[1].iter().map(|r| (r.ready, r.corrid)).collect();
    assert_eq!(slot_rows, [(0, 0), (1, 2)], "sequence 1 keeps slot 0, so 2's batch carries an empty row 0");
}

#[tokio::test(start_paused = true)]
async fn an_idle_sequence_is_released_and_must_start_again() {
    let backend = Arc::new(Accumulator::default());
    let batcher = batcher(&config(direct(), 1, 50_000), &backend, SchedulerLimits::default());
    assert_eq!(value(send(&batcher, step(8, 1).start())).await, 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (code, message) = refusal(send(&batcher, step(8, 1))).await;
    assert_eq!(code, ErrorCode::InvalidArg);
    assert!(message.contains("must specify the START flag"), "{message}");
}

#[tokio::test]
async fn a_sequence_beyond_the_slots_waits_in_the_backlog_until_one_ends() {
    let backend = Arc::new(Accumulator::default());
    let batcher = batcher(&config(direct(), 1, 0), &backend, SchedulerLimits::default());
    assert_eq!(value(send(&batcher, step(1, 1).start())).await, 1);
    let waiting = send(&batcher, step(2, 2).start());
    assert_eq!(value(send(&batcher, step(1, 1).end())).await, 2);
    assert_eq!(value(waiting).await, 2);
    let order: Vec<u64> = backend.calls().iter().map(|rows| rows[0].corrid).collect();
    assert_eq!(order, [1, 1, 2], "sequence 2 got the slot when 1 ended");
}

#[tokio::test]
async fn the_sequence_bound_refuses_a_new_sequence_and_keeps_the_others() {
    let backend = Arc::new(Accumulator::default());
    let limits = SchedulerLimits { max_sequences: 1, ..Default::default() };
    let batcher = batcher(&config(oldest(1), 1, 0), &backend, limits);
    assert_eq!(value(send(&batcher, step(1, 1).start())).await, 1);
    let (code, message) = refusal(send(&batcher, step(2, 1).start())).await;
    assert_eq!((code, message.as_str()), (ErrorCode::Unavailable, "model 'acc' already holds its limit of 1 sequences"));
    assert_eq!(value(send(&batcher, step(1, 1).end())).await, 2);
    assert_eq!(value(send(&batcher, step(2, 5).start())).await, 5, "its end made room");
}

#[test]
fn configs_triton_would_refuse_fail_the_load() {
    let backend: Arc<dyn Backend> = Arc::new(Accumulator::default());
    let no_files = |_: &str, _: usize| Err("no files".to_string());
    let load = |config: ModelConfig| {
        let Some(SchedulingChoice::SequenceBatching(batching)) = &config.scheduling_choice else { unreachable!() };
        SequenceBatcher::for_config(&config, batching, &backend, &Arc::default(), SchedulerLimits::default(), &no_files)
            .map(|_| ())
    };
    assert!(load(config(oldest(0), 4, 0)).unwrap_err().contains("max_candidate_sequences"));
    let mut two_controls = config(direct(), 4, 0);
    if let Some(SchedulingChoice::SequenceBatching(b)) = &mut two_controls.scheduling_choice {
        let extra = b.control_input[1].control[0].clone();
        b.control_input[0].control.push(extra);
    }
    assert!(load(two_controls).unwrap_err().contains("exactly one control"));
    let mut from_file = config(direct(), 4, 0);
    if let Some(SchedulingChoice::SequenceBatching(b)) = &mut from_file.scheduling_choice {
        b.state[0].initial_state[0].state_data = Some(StateData::DataFile("init.bin".into()));
    }
    assert_eq!(load(from_file).unwrap_err(), "no files");
}
