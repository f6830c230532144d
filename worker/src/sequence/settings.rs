//! What a model's `sequence_batching { }` asks for, checked at load: the strategy and its slots,
//! the idle timeout, the control inputs the batcher fills in for the backend, and the implicit
//! state it keeps between requests of one sequence.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tritium_proto::inference::model_sequence_batching::control::Kind;
use tritium_proto::inference::model_sequence_batching::{Control, InitialState, State, StrategyChoice, initial_state::StateData};
use tritium_proto::inference::{ModelConfig, ModelSequenceBatching};
use tritium_tensor::{DataType, Tensor, bytes_codec};

use crate::params::SequenceId;
use crate::ragged::RaggedBatching;
use crate::scheduler_limits::instance_count;

/// Triton's `max_sequence_idle_microseconds` when the config leaves it at 0: one second.
const DEFAULT_IDLE: Duration = Duration::from_secs(1);

/// Bytes one state's initial value may take (a `data_file` larger than its dims say is refused).
const MAX_INITIAL_STATE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Each sequence keeps one batch slot of one instance for its lifetime; a batch holds the
    /// slot's row for every slot up to the last one with work, empty ones not READY.
    Direct,
    /// Up to `max_candidate_sequences` sequences are candidates; a batch takes the oldest
    /// requests of different candidates.
    Oldest,
}

/// How control inputs and state reach the backend, and how batches form.
#[derive(Debug, Clone)]
pub(crate) struct SequenceSettings {
    pub(crate) model: String,
    pub(crate) strategy: Strategy,
    /// Rows per batch (1 for a model without a batch dimension).
    pub(crate) max_rows: usize,
    /// Whether tensors carry a leading batch dimension.
    pub(crate) batched: bool,
    /// A decoupled model: each request streams its responses.
    pub(crate) decoupled: bool,
    pub(crate) instances: usize,
    /// Sequences that hold a slot at once; more wait in a backlog.
    pub(crate) slots: usize,
    pub(crate) idle: Duration,
    pub(crate) max_delay: Duration,
    /// `oldest`: batch sizes that go at once.
    pub(crate) preferred: Vec<usize>,
    /// `direct`: the share of a lane's slots with work that lets a batch go before `max_delay`.
    pub(crate) minimum_utilization: f32,
    pub(crate) controls: Vec<ControlInput>,
    pub(crate) states: Vec<StateSpec>,
    /// How rows are laid out for a backend that stacks them (ragged inputs, batch inputs and
    /// outputs).
    pub(crate) ragged: Arc<RaggedBatching>,
}

/// One control input and the values it takes.
#[derive(Debug, Clone)]
pub(crate) struct ControlInput {
    pub(crate) name: String,
    pub(crate) kind: ControlKind,
}

#[derive(Debug, Clone)]
pub(crate) enum ControlKind {
    /// START, END or READY: the row's flag as `[false, true]` in the control's datatype.
    Flag {
        which: Flag,
        datatype: DataType,
        values: [Bytes; 2],
    },
    CorrelationId {
        datatype: DataType,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    Start,
    End,
    Ready,
}

/// One implicit state: the backend reads it as `input_name`, writes the next one as
/// `output_name`; `initial` is the value at the start of a sequence (one row, no batch dimension).
#[derive(Debug, Clone)]
pub(crate) struct StateSpec {
    pub(crate) input_name: String,
    pub(crate) output_name: String,
    pub(crate) initial: Tensor,
}

/// What one row of a batch says about its sequence.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowFlags {
    pub(crate) start: bool,
    pub(crate) end: bool,
    pub(crate) ready: bool,
}

impl SequenceSettings {
    /// The settings of `config`'s `sequence_batching`, if it has one. `read_initial_state` reads
    /// a `data_file` of an initial state (from the model's `initial_state` folder).
    pub(crate) fn from_config(
        config: &ModelConfig,
        batching: &ModelSequenceBatching,
        ragged: &Arc<RaggedBatching>,
        read_initial_state: &dyn Fn(&str, usize) -> Result<Bytes, String>,
    ) -> Result<SequenceSettings, String> {
        let model = config.name.clone();
        let batched = config.max_batch_size > 0;
        let decoupled = config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled);
        let max_rows = usize::try_from(config.max_batch_size.max(1)).unwrap_or(1);
        let instances = instance_count(config);
        let micros = |us: u64| Duration::from_micros(us);
        let (strategy, slots, max_delay, preferred, minimum_utilization) = match &batching.strategy_choice {
            Some(StrategyChoice::Oldest(oldest)) => {
                let candidates = usize::try_from(oldest.max_candidate_sequences).unwrap_or(0);
                if candidates == 0 {
                    return Err("sequence_batching oldest strategy must set max_candidate_sequences > 0".to_string());
                }
                let preferred = oldest.preferred_batch_size.iter().map(|&p| usize::try_from(p).unwrap_or(0)).collect();
                (Strategy::Oldest, candidates, micros(oldest.max_queue_delay_microseconds), preferred, 0.0)
            }
            Some(StrategyChoice::Direct(direct)) => (
                Strategy::Direct,
                instances * max_rows,
                micros(direct.max_queue_delay_microseconds),
                Vec::new(),
                direct.minimum_slot_utilization,
            ),
            None => (Strategy::Direct, instances * max_rows, Duration::ZERO, Vec::new(), 0.0),
        };
        let idle = match batching.max_sequence_idle_microseconds {
            0 => DEFAULT_IDLE,
            us => micros(us),
        };
        let controls =
            batching.control_input.iter().map(|input| control_input(&input.name, &input.control)).collect::<Result<_, _>>()?;
        let states = batching.state.iter().map(|state| state_spec(state, read_initial_state)).collect::<Result<Vec<_>, _>>()?;
        Ok(SequenceSettings {
            model,
            strategy,
            max_rows,
            batched,
            decoupled,
            instances,
            slots,
            idle,
            max_delay,
            preferred,
            minimum_utilization,
            controls,
            states,
            ragged: Arc::clone(ragged),
        })
    }

    /// Whether two requests' inputs can be rows of one batch (taken in name order: clients list
    /// inputs in any order); ragged inputs may differ in shape.
    pub(crate) fn shareable(&self, a: &[Tensor], b: &[Tensor]) -> bool {
        a.len() == b.len()
            && a.iter().all(|x| {
                b.iter()
                    .find(|y| y.name == x.name)
                    .is_some_and(|y| self.ragged.compatible(std::slice::from_ref(x), std::slice::from_ref(y)))
            })
    }

    /// The control tensors of one row (shape `[1]`, or `[1, 1]` with a batch dimension).
    pub(crate) fn control_tensors(&self, flags: RowFlags, id: Option<&SequenceId>) -> Result<Vec<Tensor>, String> {
        let shape = if self.batched { vec![1, 1] } else { vec![1] };
        self.controls
            .iter()
            .map(|control| {
                let (datatype, data) = match &control.kind {
                    ControlKind::Flag { which, datatype, values } => {
                        let on = match which {
                            Flag::Start => flags.start,
                            Flag::End => flags.end,
                            Flag::Ready => flags.ready,
                        };
                        (*datatype, values[usize::from(on)].clone())
                    }
                    ControlKind::CorrelationId { datatype } => (*datatype, self.correlation_id(*datatype, id)?),
                };
                Ok(Tensor::new(control.name.clone(), datatype, shape.clone(), data))
            })
            .collect()
    }

    /// Refuses a string id where the CORRID control carries numbers (Triton would hand the
    /// backend the string's bytes read as a number).
    pub(crate) fn check_correlation_id(&self, id: &SequenceId) -> Result<(), String> {
        let numeric = self.controls.iter().find_map(|c| match c.kind {
            ControlKind::CorrelationId { datatype } if datatype != DataType::Bytes => Some(datatype),
            _ => None,
        });
        match (id, numeric) {
            (SequenceId::Text(text), Some(datatype)) => Err(format!(
                "inference request to model '{}' has the string sequence id '{text}', but its CONTROL_SEQUENCE_CORRID is {}",
                self.model,
                datatype.kserve_name()
            )),
            _ => Ok(()),
        }
    }

    /// A sequence id as its CORRID control's datatype carries it.
    fn correlation_id(&self, datatype: DataType, id: Option<&SequenceId>) -> Result<Bytes, String> {
        let number = match id {
            None => 0,
            Some(SequenceId::Number(n)) => *n,
            Some(SequenceId::Text(text)) if datatype == DataType::Bytes => return Ok(bytes_codec::encode([text.as_bytes()])),
            Some(id @ SequenceId::Text(_)) => return self.check_correlation_id(id).map(|()| Bytes::new()),
        };
        Ok(match datatype {
            DataType::Bytes => bytes_codec::encode([number.to_string().as_bytes()]),
            DataType::Uint64 => Bytes::copy_from_slice(&number.to_le_bytes()),
            DataType::Int64 => Bytes::copy_from_slice(&(number as i64).to_le_bytes()),
            DataType::Uint32 => Bytes::copy_from_slice(&(number as u32).to_le_bytes()),
            _ => Bytes::copy_from_slice(&(number as i32).to_le_bytes()),
        })
    }

    /// The initial value of every state, shaped for one row.
    pub(crate) fn initial_states(&self) -> Vec<Tensor> {
        self.states
            .iter()
            .map(|state| {
                let mut tensor = state.initial.clone();
                if self.batched {
                    tensor.shape.insert(0, 1);
                }
                tensor
            })
            .collect()
    }
}

fn control_input(name: &str, controls: &[Control]) -> Result<ControlInput, String> {
    let [control] = controls else {
        return Err(format!("sequence batching control input '{name}' must specify exactly one control"));
    };
    let kind = match control.kind() {
        Kind::ControlSequenceCorrid => {
            let datatype = DataType::from_config(control.data_type)
                .filter(|t| {
                    matches!(t, DataType::Uint64 | DataType::Int64 | DataType::Uint32 | DataType::Int32 | DataType::Bytes)
                })
                .ok_or_else(|| {
                    format!(
                        "sequence batching control input '{name}' (CONTROL_SEQUENCE_CORRID) must have data_type TYPE_UINT64, \
                         TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING"
                    )
                })?;
            ControlKind::CorrelationId { datatype }
        }
        flag => {
            let which = match flag {
                Kind::ControlSequenceStart => Flag::Start,
                Kind::ControlSequenceEnd => Flag::End,
                _ => Flag::Ready,
            };
            let pair = |count: usize| {
                (count == 2)
                    .then_some(())
                    .ok_or_else(|| format!("sequence batching control input '{name}' must give exactly two false/true values"))
            };
            let (datatype, values) = if !control.int32_false_true.is_empty() {
                pair(control.int32_false_true.len())?;
                (DataType::Int32, control.int32_false_true.iter().map(|v| Bytes::copy_from_slice(&v.to_le_bytes())).collect())
            } else if !control.fp32_false_true.is_empty() {
                pair(control.fp32_false_true.len())?;
                (DataType::Fp32, control.fp32_false_true.iter().map(|v| Bytes::copy_from_slice(&v.to_le_bytes())).collect())
            } else if !control.bool_false_true.is_empty() {
                pair(control.bool_false_true.len())?;
                (DataType::Bool, control.bool_false_true.iter().map(|&v| Bytes::copy_from_slice(&[u8::from(v)])).collect())
            } else {
                return Err(format!(
                    "sequence batching control input '{name}' must specify int32_false_true, fp32_false_true or bool_false_true"
                ));
            };
            let values: Vec<Bytes> = values;
            let [off, on]: [Bytes; 2] = values.try_into().map_err(|_| format!("control input '{name}' needs two values"))?;
            ControlKind::Flag { which, datatype, values: [off, on] }
        }
    };
    Ok(ControlInput { name: name.to_string(), kind })
}

fn state_spec(state: &State, read_initial_state: &dyn Fn(&str, usize) -> Result<Bytes, String>) -> Result<StateSpec, String> {
    let name = &state.input_name;
    if name.is_empty() || state.output_name.is_empty() {
        return Err("sequence batching state must name its input_name and output_name".to_string());
    }
    let datatype = DataType::from_config(state.data_type)
        .ok_or_else(|| format!("sequence batching state '{name}' has an unsupported data_type"))?;
    let initial = match state.initial_state.as_slice() {
        [] => zeros(name, datatype, &state.dims)?,
        [initial] => initial_value(name, datatype, initial, read_initial_state)?,
        _ => return Err(format!("sequence batching state '{name}' may have at most one initial_state")),
    };
    Ok(StateSpec { input_name: name.clone(), output_name: state.output_name.clone(), initial })
}

fn initial_value(
    name: &str,
    datatype: DataType,
    initial: &InitialState,
    read_initial_state: &dyn Fn(&str, usize) -> Result<Bytes, String>,
) -> Result<Tensor, String> {
    if DataType::from_config(initial.data_type) != Some(datatype) {
        return Err(format!("the initial_state of sequence batching state '{name}' must have the state's data_type"));
    }
    if initial.dims.iter().any(|&d| d < 0) {
        return Err(format!("the initial_state of sequence batching state '{name}' must have fixed dims"));
    }
    match &initial.state_data {
        Some(StateData::ZeroData(true)) => zeros(name, datatype, &initial.dims),
        Some(StateData::DataFile(file)) => {
            let size = byte_size(name, datatype, &initial.dims)?;
            let data = read_initial_state(file, size)?;
            if datatype != DataType::Bytes && data.len() != size {
                return Err(format!(
                    "the initial_state file of sequence batching state '{name}' holds {} bytes, its dims need {size}",
                    data.len()
                ));
            }
            Ok(Tensor::new(name, datatype, initial.dims.clone(), data))
        }
        _ => Err(format!("the initial_state of sequence batching state '{name}' must set zero_data: true or data_file")),
    }
}

/// A state's value of `dims` (variable dims taken as 0) with every element zero.
fn zeros(name: &str, datatype: DataType, dims: &[i64]) -> Result<Tensor, String> {
    let dims: Vec<i64> = dims.iter().map(|&d| d.max(0)).collect();
    let data = match datatype {
        DataType::Bytes => {
            let count = dims.iter().product::<i64>();
            bytes_codec::encode((0..count).map(|_| b""))
        }
        _ => Bytes::from(vec![0u8; byte_size(name, datatype, &dims)?]),
    };
    Ok(Tensor::new(name, datatype, dims, data))
}

fn byte_size(name: &str, datatype: DataType, dims: &[i64]) -> Result<usize, String> {
    let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    let size = elements.and_then(|n| n.checked_mul(datatype.element_size().unwrap_or(1)));
    size.filter(|&s| s <= MAX_INITIAL_STATE_BYTES)
        .ok_or_else(|| format!("the initial value of sequence batching state '{name}' is too large"))
}
