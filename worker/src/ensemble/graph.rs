//! An ensemble's steps as a graph, checked at load: every composing model is served, every
//! mapped name is an input or output of its model, every tensor a step reads is written (by the
//! client or by one step), datatypes agree along each edge, nothing is written twice or left
//! unread, and there is no cycle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tritium_proto::inference::ModelConfig;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::DataType;

use crate::model::ModelVersion;

/// One step: which model, and how ensemble tensors map to its inputs and outputs.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) model: String,
    /// `None` runs the latest version.
    pub(crate) version: Option<i64>,
    /// (model input, ensemble tensor)
    pub(crate) inputs: Vec<(String, String)>,
    /// (model output, ensemble tensor)
    pub(crate) outputs: Vec<(String, String)>,
}

/// The checked steps of one ensemble, in an order where each step comes after its producers.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step>,
    pub(crate) outputs: Vec<String>,
}

/// Finds a served model version by name and version (`None`: the latest).
pub(crate) type Lookup<'a> = dyn Fn(&str, Option<i64>) -> Option<Arc<ModelVersion>> + 'a;

/// The composing models an ensemble config names (for loading them first).
pub fn composing_models(config: &ModelConfig) -> Vec<String> {
    match &config.scheduling_choice {
        Some(SchedulingChoice::EnsembleScheduling(ensemble)) => ensemble.step.iter().map(|s| s.model_name.clone()).collect(),
        _ => Vec::new(),
    }
}

impl Graph {
    /// Checks `config`'s `ensemble_scheduling` against the models `lookup` finds (by name and
    /// version).
    pub(crate) fn from_config(config: &ModelConfig, lookup: &Lookup<'_>) -> Result<Graph, String> {
        let name = config.name.as_str();
        let Some(SchedulingChoice::EnsembleScheduling(ensemble)) = &config.scheduling_choice else {
            return Err(format!("ensemble '{name}' must have ensemble_scheduling"));
        };
        if ensemble.step.is_empty() {
            return Err(format!("ensemble '{name}' must have at least one step"));
        }
        let steps: Vec<Step> = ensemble
            .step
            .iter()
            .map(|s| Step {
                model: s.model_name.clone(),
                version: (s.model_version >= 0).then_some(s.model_version),
                inputs: sorted(&s.input_map),
                outputs: sorted(&s.output_map),
            })
            .collect();
        let missing: Vec<&str> =
            steps.iter().filter(|s| lookup(&s.model, s.version).is_none()).map(|s| s.model.as_str()).collect();
        if !missing.is_empty() {
            return Err(format!("ensemble {name} contains models that are not available or ambiguous: {}", missing.join(", ")));
        }
        // The datatype of every ensemble tensor, from whoever writes it.
        let mut written: HashMap<&str, (DataType, Option<usize>)> = HashMap::new();
        for input in &config.input {
            let datatype = DataType::from_config(input.data_type).ok_or_else(|| format!("ensemble '{name}': bad input type"))?;
            written.insert(&input.name, (datatype, None));
        }
        for (index, step) in steps.iter().enumerate() {
            let Some(model) = lookup(&step.model, step.version) else { continue };
            let schema = &model.schema;
            for (model_input, tensor) in &step.inputs {
                if !schema.inputs.iter().any(|i| &i.name == model_input) {
                    return Err(format!(
                        "in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing input {model_input} in model {}",
                        step.model
                    ));
                }
            }
            for (model_output, tensor) in &step.outputs {
                let Some(spec) = schema.outputs.iter().find(|o| &o.name == model_output) else {
                    return Err(format!(
                        "in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing output {model_output} in model {}",
                        step.model
                    ));
                };
                if written.insert(tensor, (spec.datatype, Some(index))).is_some() {
                    return Err(format!(
                        "ensemble tensor '{tensor}' can appear in an output map only once for ensemble '{name}' step {index}"
                    ));
                }
            }
        }
        let mut read: HashSet<&str> = HashSet::new();
        for step in &steps {
            let Some(model) = lookup(&step.model, step.version) else { continue };
            for (model_input, tensor) in &step.inputs {
                read.insert(tensor);
                let Some((datatype, _)) = written.get(tensor.as_str()) else {
                    return Err(format!(
                        "in ensemble '{name}', step '{}' reads ensemble tensor '{tensor}', which no input or step writes",
                        step.model
                    ));
                };
                let expected = model.schema.inputs.iter().find(|i| &i.name == model_input).map(|i| i.datatype);
                if expected != Some(*datatype) {
                    return Err(format!(
                        "in ensemble '{name}', ensemble tensor '{tensor}' is {}, but input '{model_input}' of model '{}' is {}",
                        datatype.kserve_name(),
                        step.model,
                        expected.map_or("unknown", DataType::kserve_name)
                    ));
                }
            }
        }
        for output in &config.output {
            read.insert(&output.name);
            let Some((datatype, _)) = written.get(output.name.as_str()) else {
                return Err(format!("output '{}' for ensemble '{name}' is not written", output.name));
            };
            if DataType::from_config(output.data_type) != Some(*datatype) {
                return Err(format!(
                    "in ensemble '{name}', output '{}' is declared {}, but its step writes {}",
                    output.name,
                    DataType::from_config(output.data_type).map_or("unknown", DataType::kserve_name),
                    datatype.kserve_name()
                ));
            }
        }
        if let Some(unused) = written.keys().filter(|t| !read.contains(*t)).min() {
            return Err(format!("ensemble tensor '{unused}' is unused in ensemble '{name}'"));
        }
        let order = topological_order(name, &steps, &written)?;
        Ok(Graph {
            name: name.to_string(),
            steps: order.into_iter().map(|i| steps[i].clone()).collect(),
            outputs: config.output.iter().map(|o| o.name.clone()).collect(),
        })
    }
}

fn sorted(map: &std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    pairs.sort();
    pairs
}

/// The steps in an order that runs producers first; an error naming a step on a cycle.
fn topological_order(
    name: &str,
    steps: &[Step],
    written: &HashMap<&str, (DataType, Option<usize>)>,
) -> Result<Vec<usize>, String> {
    let producers = |step: &Step| -> Vec<usize> {
        step.inputs.iter().filter_map(|(_, tensor)| written.get(tensor.as_str()).and_then(|(_, by)| *by)).collect()
    };
    let mut order = Vec::with_capacity(steps.len());
    let mut placed = vec![false; steps.len()];
    while order.len() < steps.len() {
        let next = (0..steps.len()).find(|&i| !placed[i] && producers(&steps[i]).iter().all(|&p| placed[p]));
        let Some(next) = next else {
            let stuck = (0..steps.len()).find(|&i| !placed[i]).map_or("", |i| steps[i].model.as_str());
            return Err(format!("ensemble '{name}' has a cycle: step '{stuck}' depends on its own outputs"));
        };
        placed[next] = true;
        order.push(next);
    }
    Ok(order)
}
