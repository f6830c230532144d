//! A model's ONNX Runtime session settings from its config, with Triton's parameter names and
//! values: `intra_op_thread_count`, `inter_op_thread_count`, `execution_mode`, `enable_mem_arena`,
//! `enable_mem_pattern`, `memory.enable_memory_arena_shrinkage` and
//! `optimization { graph { level } }`.

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use tritium_proto::inference::ModelConfig;

/// Session settings; `None` keeps ONNX Runtime's default.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    pub intra_op_threads: Option<usize>,
    pub inter_op_threads: Option<usize>,
    pub parallel_execution: bool,
    pub memory_arena: Option<bool>,
    pub memory_pattern: Option<bool>,
    /// A run option, e.g. `cpu:0`: give the arena's free memory back after each run.
    pub arena_shrinkage: Option<String>,
    pub optimization: GraphOptimizationLevel,
}

/// The model parameters an ONNX model's session reads (a text model's are read by the door).
pub const READ_PARAMETERS: [&str; 6] = [
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "memory.enable_memory_arena_shrinkage",
];

impl SessionSettings {
    /// Reads the config's parameters; a bad value names its key.
    pub fn from_config(config: &ModelConfig) -> Result<SessionSettings, String> {
        let text = |key: &str| config.parameters.get(key).map(|p| p.string_value.trim()).filter(|v| !v.is_empty());
        let count = |key: &str| -> Result<Option<usize>, String> {
            match text(key) {
                None => Ok(None),
                Some(v) => {
                    let n: i64 = v.parse().map_err(|_| format!("parameter '{key}' must be an integer, got '{v}'"))?;
                    Ok(usize::try_from(n).ok().filter(|&n| n > 0))
                }
            }
        };
        let flag = |key: &str| -> Result<Option<bool>, String> { text(key).map(|v| parse_bool(key, v)).transpose() };
        let parallel_execution = match text("execution_mode") {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => {
                return Err(format!(
                    "Invalid configuration value provided. Expected values for  execution_mode are 0 or 1 but got {other} ."
                ));
            }
        };
        let level = config.optimization.as_ref().and_then(|o| o.graph.as_ref()).map_or(0, |g| g.level);
        let optimization = match level {
            -1 => GraphOptimizationLevel::Level1,
            1 => GraphOptimizationLevel::Level2,
            2 => GraphOptimizationLevel::Disable,
            _ => GraphOptimizationLevel::All,
        };
        Ok(SessionSettings {
            intra_op_threads: count("intra_op_thread_count")?,
            inter_op_threads: count("inter_op_thread_count")?,
            parallel_execution,
            memory_arena: flag("enable_mem_arena")?,
            memory_pattern: flag("enable_mem_pattern")?,
            arena_shrinkage: text("memory.enable_memory_arena_shrinkage").map(str::to_string),
            optimization,
        })
    }

    /// Whether sessions with these settings use the environment's shared intra-op pool.
    pub fn shares_the_pool(&self) -> bool {
        self.intra_op_threads.is_none() && self.inter_op_threads.is_none()
    }

    /// Applies the settings to a session builder.
    pub fn apply(&self, builder: SessionBuilder) -> ort::Result<SessionBuilder> {
        let mut builder = builder.with_optimization_level(self.optimization)?.with_parallel_execution(self.parallel_execution)?;
        // Sessions share the environment's pool unless the config asks for threads of their own.
        if !self.shares_the_pool() {
            builder = builder.with_independent_thread_pool()?;
        }
        if let Some(threads) = self.intra_op_threads {
            builder = builder.with_intra_threads(threads)?;
        }
        if let Some(threads) = self.inter_op_threads {
            builder = builder.with_inter_threads(threads)?;
        }
        if let Some(pattern) = self.memory_pattern {
            builder = builder.with_memory_pattern(pattern)?;
        }
        // Registering the CPU provider at all sets its arena; left alone, ONNX Runtime's default (on) holds.
        if let Some(arena) = self.memory_arena {
            builder = builder.with_execution_providers([ort::ep::CPU::default().with_arena_allocator(arena).build()])?;
        }
        Ok(builder)
    }
}

/// Triton's boolean words: true/on/1 and false/off/0, any case.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(format!("parameter '{key}': failed to convert '{value}' to boolean")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tritium_proto::inference::model_optimization_policy::Graph;
    use tritium_proto::inference::{ModelOptimizationPolicy, ModelParameter};

    use super::*;

    fn config(parameters: &[(&str, &str)], level: Option<i32>) -> ModelConfig {
        ModelConfig {
            parameters: parameters.iter().map(|(k, v)| (k.to_string(), ModelParameter { string_value: v.to_string() })).collect(),
            optimization: level.map(|level| ModelOptimizationPolicy { graph: Some(Graph { level }), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn parameters_nothing_reads_are_named() {
        let read = config(&[("intra_op_thread_count", "2"), ("openai_task", "score"), ("tokenizer", "t.json")], None);
        assert!(tritium_backend_api::unread_parameters(&read, &READ_PARAMETERS).is_empty());
        let unread = config(&[("gpu_mem_limit", "1"), ("enable_mem_arena", "1"), ("cudnn_conv_algo_search", "0")], None);
        assert_eq!(
            tritium_backend_api::unread_parameters(&unread, &READ_PARAMETERS),
            ["cudnn_conv_algo_search", "gpu_mem_limit"]
        );
    }

    #[test]
    fn tritons_parameters_map_to_session_settings() {
        let settings = SessionSettings::from_config(&config(
            &[
                ("intra_op_thread_count", "2"),
                ("inter_op_thread_count", "0"),
                ("execution_mode", "1"),
                ("enable_mem_arena", "Off"),
                ("enable_mem_pattern", "true"),
                ("memory.enable_memory_arena_shrinkage", "cpu:0"),
            ],
            Some(2),
        ))
        .unwrap();
        assert_eq!(settings.intra_op_threads, Some(2));
        assert_eq!(settings.inter_op_threads, None, "0 leaves the choice to ONNX Runtime");
        assert!(settings.parallel_execution);
        assert_eq!((settings.memory_arena, settings.memory_pattern), (Some(false), Some(true)));
        assert_eq!(settings.arena_shrinkage.as_deref(), Some("cpu:0"));
        assert_eq!(settings.optimization, GraphOptimizationLevel::Disable);
    }

    #[test]
    fn graph_levels_follow_tritons_numbering() {
        let level = |l| SessionSettings::from_config(&config(&[], l)).unwrap().optimization;
        assert_eq!(level(None), GraphOptimizationLevel::All);
        assert_eq!(level(Some(0)), GraphOptimizationLevel::All);
        assert_eq!(level(Some(-1)), GraphOptimizationLevel::Level1);
        assert_eq!(level(Some(1)), GraphOptimizationLevel::Level2);
        assert_eq!(level(Some(2)), GraphOptimizationLevel::Disable);
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let error = |k: &str, v: &str| SessionSettings::from_config(&config(&[(k, v)], None)).unwrap_err();
        assert!(error("intra_op_thread_count", "two").contains("'intra_op_thread_count'"));
        assert!(error("enable_mem_arena", "yes").contains("failed to convert 'yes' to boolean"));
        assert_eq!(
            error("execution_mode", "3"),
            "Invalid configuration value provided. Expected values for  execution_mode are 0 or 1 but got 3 ."
        );
    }
}
