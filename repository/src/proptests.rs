//! Property tests of the config parsers: `config.pbtxt` text (with the colon pre-pass) and the JSON
//! of `RepositoryModelLoad`'s `config` parameter, which comes straight from clients.
//!
//! Configs are generated as a small spec, written out as text in the styles people use, and the
//! parse is compared with the `ModelConfig` built from the same spec; `normalize_config` is
//! compared with a plain restatement of Triton's rules. The fuzz targets in `fuzz/` drive the
//! same entry points.

use proptest::collection::vec;
use proptest::prelude::*;
use prost_reflect::DescriptorPool;
use serde_json::Value;
use tritium_proto::inference::model_version_policy::{All, Latest, PolicyChoice, Specific};
use tritium_proto::inference::{DataType, ModelConfig, ModelInput, ModelOutput, ModelVersionPolicy};

use super::pbtxt::insert_list_colons;
use super::{RepositoryError, normalize_config, parse_config_json, parse_config_text, render_config_json};

/// Cases per property: the suite stays in seconds on two cores. `PROPTEST_CASES=100000` runs a
/// longer search locally.
fn config() -> ProptestConfig {
    match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default(),
        None => ProptestConfig::with_cases(256),
    }
}

#[derive(Debug, Clone)]
struct TensorSpec {
    name: String,
    data_type: i32,
    dims: Vec<i64>,
}

#[derive(Debug, Clone)]
enum PolicySpec {
    Latest(u32),
    All,
    Specific(Vec<i64>),
}

/// How the text spells lists: `input [ {..}, {..} ]`, `input: [ .. ]` or repeated `input { .. }`.
#[derive(Debug, Clone, Copy)]
enum ListStyle {
    Bare,
    Colon,
    Repeated,
}

#[derive(Debug, Clone)]
struct ConfigSpec {
    name: String,
    backend: String,
    max_batch_size: i32,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    policy: Option<PolicySpec>,
    style: ListStyle,
}

/// Names that collide, are empty, or hold the characters the colon pre-pass must skip in strings.
fn tensor_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Z]{1,2}[0-9]?",
        1 => proptest::sample::select(vec!["", "a [b", "# not a comment", "q\"uote", "back\\slash", "ünï{code}"])
            .prop_map(str::to_string),
    ]
}

fn tensor_spec() -> impl Strategy<Value = TensorSpec> {
    let data_type = prop_oneof![8 => 1i32..=14, 1 => Just(0), 1 => -2i32..40];
    let dim = prop_oneof![8 => 1i64..20, 2 => Just(-1), 1 => any::<i64>()];
    (tensor_name(), data_type, vec(dim, 0..4)).prop_map(|(name, data_type, dims)| TensorSpec { name, data_type, dims })
}

fn config_spec() -> impl Strategy<Value = ConfigSpec> {
    let name = proptest::sample::select(vec!["", "m", "m", "other", "m\"#["]).prop_map(str::to_string);
    let policy = proptest::option::of(prop_oneof![
        (0u32..3).prop_map(PolicySpec::Latest),
        Just(PolicySpec::All),
        vec(any::<i64>(), 0..3).prop_map(PolicySpec::Specific),
    ]);
    let style = proptest::sample::select(vec![ListStyle::Bare, ListStyle::Colon, ListStyle::Repeated]);
    let max_batch_size = prop_oneof![4 => 0i32..16, 1 => any::<i32>()];
    (name, "[a-z_]{0,8}", max_batch_size, vec(tensor_spec(), 0..3), vec(tensor_spec(), 0..3), policy, style).prop_map(
        |(name, backend, max_batch_size, inputs, outputs, policy, style)| ConfigSpec {
            name,
            backend,
            max_batch_size,
            inputs,
            outputs,
            policy,
            style,
        },
    )
}

impl ConfigSpec {
    fn to_config(&self) -> ModelConfig {
        let policy_choice = self.policy.as_ref().map(|policy| match policy {
            PolicySpec::Latest(num_versions) => PolicyChoice::Latest(Latest { num_versions: *num_versions }),
            PolicySpec::All => PolicyChoice::All(All {}),
            PolicySpec::Specific(versions) => PolicyChoice::Specific(Specific { versions: versions.clone() }),
        });
        ModelConfig {
            name: self.name.clone(),
            backend: self.backend.clone(),
            max_batch_size: self.max_batch_size,
            input: self
                .inputs
                .iter()
                .map(|t| ModelInput { name: t.name.clone(), data_type: t.data_type, dims: t.dims.clone(), ..Default::default() })
                .collect(),
            output: self
                .outputs
                .iter()
                .map(|t| ModelOutput { name: t.name.clone(), data_type: t.data_type, dims: t.dims.clone(), ..Default::default() })
                .collect(),
            version_policy: policy_choice.map(|choice| ModelVersionPolicy { policy_choice: Some(choice) }),
            ..Default::default()
        }
    }

    /// The spec as `config.pbtxt` text, with comments where people put them.
    fn to_text(&self) -> String {
        let mut text = format!(
            "# generated\nname: {}\nbackend: {} # the runtime\nmax_batch_size: {}\n",
            quote(&self.name),
            quote(&self.backend),
            self.max_batch_size
        );
        for (field, tensors) in [("input", &self.inputs), ("output", &self.outputs)] {
            let bodies: Vec<String> = tensors.iter().map(|t| self.tensor_text(t)).collect();
            match self.style {
                ListStyle::Bare => text += &format!("{field} [\n  {}\n]\n", bodies.join(",\n  ")),
                ListStyle::Colon => text += &format!("{field}: [ {} ]\n", bodies.join(", ")),
                ListStyle::Repeated => bodies.iter().for_each(|body| text += &format!("{field} {body}\n")),
            }
        }
        text += &match &self.policy {
            None => String::new(),
            Some(PolicySpec::Latest(n)) => format!("version_policy {{ latest {{ num_versions: {n} }} }}\n"),
            Some(PolicySpec::All) => "version_policy: { all { } }\n".to_string(),
            Some(PolicySpec::Specific(versions)) => {
                format!("version_policy {{ specific {{ versions {} }} }}\n", list(versions))
            }
        };
        text
    }

    fn tensor_text(&self, t: &TensorSpec) -> String {
        let data_type = match DataType::try_from(t.data_type) {
            Ok(known) => known.as_str_name().to_string(),
            Err(_) => t.data_type.to_string(),
        };
        let dims = match self.style {
            ListStyle::Repeated => t.dims.iter().map(|d| format!("dims: {d} ")).collect(),
            ListStyle::Colon => format!("dims: {}", list(&t.dims)),
            ListStyle::Bare => format!("dims {}", list(&t.dims)),
        };
        format!("{{ name: {} data_type: {data_type} {dims} }}", quote(&t.name))
    }

    /// Triton's rules, restated: `None` when the config normalizes, else the error variant's name
    /// and a phrase its message must hold.
    fn expected_problem(&self) -> Option<(&'static str, &'static str)> {
        if !self.name.is_empty() && self.name != "m" {
            return Some(("NameMismatch", "directory name must equal model name"));
        }
        if self.max_batch_size < 0 {
            return Some(("InvalidConfig", "'max_batch_size' must be non-negative"));
        }
        if matches!(self.policy, Some(PolicySpec::Latest(0))) {
            return Some(("InvalidConfig", "num_versions' must be at least 1"));
        }
        for tensors in [&self.inputs, &self.outputs] {
            let mut seen = Vec::new();
            for t in tensors {
                let problem = if t.name.is_empty() {
                    "must specify 'name'"
                } else if seen.contains(&&t.name) {
                    "is specified more than once"
                } else if t.data_type == 0 {
                    "must specify 'data_type'"
                } else if !(1..=14).contains(&t.data_type) {
                    "unknown 'data_type'"
                } else if t.dims.is_empty() {
                    "must specify 'dims'"
                } else if t.dims.iter().any(|&d| d != -1 && d < 1) {
                    "dimension must be integer >= 1, or -1"
                } else {
                    seen.push(&t.name);
                    continue;
                };
                return Some(("InvalidConfig", problem));
            }
        }
        None
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(values: &[i64]) -> String {
    let items: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("[ {} ]", items.join(", "))
}

fn variant(error: &RepositoryError) -> &'static str {
    match error {
        RepositoryError::ConfigParse { .. } => "ConfigParse",
        RepositoryError::InvalidConfig { .. } => "InvalidConfig",
        RepositoryError::NameMismatch { .. } => "NameMismatch",
        _ => "other",
    }
}

/// Words and punctuation of the text format, so that random text gets past the first token.
fn token_soup() -> impl Strategy<Value = String> {
    const TOKENS: &[&str] = &[
        "name",
        "input",
        "output",
        "dims",
        "data_type",
        "TYPE_FP32",
        "TYPE_STRING",
        "max_batch_size",
        "version_policy",
        "latest",
        "num_versions",
        "specific",
        "versions",
        "parameters",
        "key",
        "value",
        "string_value",
        "instance_group",
        "kind",
        "KIND_CPU",
        "dynamic_batching",
        "sequence_batching",
        "state",
        "initial_state",
        "{",
        "}",
        "[",
        "]",
        "<",
        ">",
        ":",
        ",",
        ";",
        "-",
        "\"s\"",
        "'t'",
        "\"un",
        "\"\\",
        "1",
        "-1",
        "0x1F",
        "1.5e3",
        "inf",
        "nan",
        "#c\n",
        "\n",
        "[x/inference.ModelConfig]",
        "[ext.field]",
        "ü",
        "\u{0}",
    ];
    vec(proptest::sample::select(TOKENS), 0..40).prop_map(|tokens| tokens.join(" "))
}

/// Text that is random, a soup of the format's tokens, or a valid config with one byte changed.
fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        token_soup(),
        (config_spec(), any::<prop::sample::Index>(), any::<char>()).prop_map(|(spec, at, c)| {
            let mut text: Vec<char> = spec.to_text().chars().collect();
            let at = at.index(text.len());
            text[at] = c;
            text.into_iter().collect()
        }),
    ]
}

/// JSON whose keys are mostly `ModelConfig`'s own (both spellings), with values of any type.
fn config_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => proptest::sample::select(vec![
            "name", "backend", "max_batch_size", "maxBatchSize", "input", "output", "dims", "data_type", "dataType",
            "version_policy", "latest", "num_versions", "specific", "versions", "parameters", "string_value",
            "dynamic_batching", "instance_group", "count", "kind",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z_]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-5i64..20).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(vec!["TYPE_FP32", "KIND_CPU", "16", "-1", "1e3", "", "x"]).prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((key.clone(), inner), 0..5).prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    });
    vec((config_json_key(), value), 0..6).prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

fn config_json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(vec![
            "name", "backend", "max_batch_size", "maxBatchSize", "input", "output", "version_policy", "versionPolicy",
            "parameters", "dynamic_batching", "instance_group",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z_]{0,6}",
    ]
}

/// Whether `key` names a field of `ModelConfig` in either JSON spelling.
fn is_config_field(key: &str) -> bool {
    let pool = DescriptorPool::decode(tritium_proto::FILE_DESCRIPTOR_SET).expect("compiled-in descriptors");
    let message = pool.get_message_by_name("inference.ModelConfig").expect("ModelConfig");
    message.get_field_by_name(key).is_some() || message.get_field_by_json_name(key).is_some()
}

/// What parsed must render to JSON and parse back to the same config.
fn check_round_trip(config: &ModelConfig) -> Result<(), TestCaseError> {
    let json = render_config_json(config).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let again = parse_config_json(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
    // Compared as JSON: a NaN float field would not equal itself.
    prop_assert_eq!(render_config_json(&again).ok(), Some(json));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// A config written as text in any of the usual styles parses to exactly the config it
    /// describes, renders to JSON and back unchanged, and normalizes exactly when Triton's
    /// rules say it should, failing with the variant and reason they predict.
    #[test]
    fn written_configs_parse_back_and_normalize_by_the_rules(spec in config_spec()) {
        let text = spec.to_text();
        let parsed = parse_config_text(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &spec.to_config(), "{}", text);
        check_round_trip(&parsed)?;
        let json = render_config_json(&parsed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse_config_json(&json).ok(), Some(parsed.clone()));

        match (normalize_config("m", parsed), spec.expected_problem()) {
            (Ok(normalized), None) => {
                prop_assert_eq!(normalized.name.as_str(), "m");
                prop_assert!(normalized.version_policy.and_then(|p| p.policy_choice).is_some());
            }
            (Err(error), Some((kind, phrase))) => {
                prop_assert_eq!(variant(&error), kind, "{}", error);
                prop_assert!(error.to_string().contains(phrase), "{} lacks {:?}", error, phrase);
                prop_assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg);
            }
            (outcome, expected) => prop_assert!(false, "normalize gave {:?}, the rules say {:?}", outcome, expected),
        }
    }

    /// Any text parses or fails with `ConfigParse` (a client error); what parses round-trips
    /// through JSON.
    #[test]
    fn arbitrary_text_parses_or_fails_cleanly(text in config_text()) {
        match parse_config_text(&text) {
            Ok(config) => check_round_trip(&config)?,
            Err(error) => {
                prop_assert_eq!(variant(&error), "ConfigParse", "{}", error);
                prop_assert_eq!(error.code(), tritium_proto::ErrorCode::InvalidArg);
            }
        }
    }

    /// The pre-pass only inserts colons, each right before a `[`, and a second pass adds none.
    #[test]
    fn the_pre_pass_only_inserts_colons_before_lists(text in config_text()) {
        let out = insert_list_colons(&text);
        let mut original = text.chars().peekable();
        let mut inserted = 0;
        let mut rest = out.chars().peekable();
        while let Some(c) = rest.next() {
            if original.peek() == Some(&c) {
                original.next();
            } else {
                prop_assert_eq!(c, ':', "{:?} -> {:?}", text, out);
                prop_assert_eq!(rest.peek(), Some(&'['), "{:?} -> {:?}", text, out);
                inserted += 1;
            }
        }
        prop_assert_eq!(original.next(), None, "{:?} -> {:?}", text, out);
        prop_assert_eq!(out.len(), text.len() + inserted);
        prop_assert_eq!(insert_list_colons(&out), out.clone());
    }

    /// Any JSON object parses or fails with `ConfigParse`; one with a key `ModelConfig` lacks
    /// always fails (unknown fields are rejected, as Triton does), and what parses round-trips.
    #[test]
    fn arbitrary_json_parses_or_fails_cleanly(json in config_json()) {
        let text = json.to_string();
        match parse_config_json(&text) {
            Ok(config) => {
                let keys = json.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
                prop_assert!(keys.iter().all(|k| is_config_field(k)), "accepted unknown field in {}", text);
                check_round_trip(&config)?;
            }
            Err(error) => prop_assert_eq!(variant(&error), "ConfigParse", "{}", error),
        }
    }

    /// Arbitrary strings as the JSON parameter: never a panic, only `ConfigParse` or a config.
    #[test]
    fn arbitrary_strings_as_json_fail_cleanly(text in prop_oneof![any::<String>(), "[\\[\\]{}\":,0-9a-z ]{0,40}"]) {
        if let Err(error) = parse_config_json(&text) {
            prop_assert_eq!(variant(&error), "ConfigParse", "{}", error);
        }
    }
}

/// Deep nesting must be an error, not a stack overflow: these run on the test harness's 2 MiB
/// thread stack, smaller than the 8 MiB of the main thread that loads a repository at startup.
#[test]
fn deeply_nested_text_is_an_error() {
    let depth = 100_000;
    for text in [
        "{".repeat(depth),
        "[".repeat(depth),
        "<".repeat(depth),
        "input [".repeat(depth),
        "input {".repeat(depth),
        "version_policy { latest {".repeat(depth),
    ] {
        let error = parse_config_text(&text).map(|_| ()).expect_err("deeply nested text");
        assert_eq!(variant(&error), "ConfigParse", "{error}");
    }
    // Brackets in strings and comments are not nesting.
    let text = format!("name: \"{}\" # {}", "{".repeat(depth), "[".repeat(depth));
    assert_eq!(parse_config_text(&text).map(|c| c.name.len()).ok(), Some(depth));
}

#[test]
fn deeply_nested_json_is_an_error() {
    let depth = 100_000;
    for json in [
        "[".repeat(depth),
        "{\"input\":".repeat(depth),
        format!("{{\"parameters\":{{\"k\":{}", "{\"string_value\":".repeat(depth)),
        format!("{{\"input\":[{}]}}", "[".repeat(depth)),
    ] {
        let error = parse_config_json(&json).map(|_| ()).expect_err("deeply nested JSON");
        assert_eq!(variant(&error), "ConfigParse", "{error}");
    }
}

/// The reproducer of a stack overflow `pbtxt::check_nesting` now prevents: `prost-reflect`
/// parses an `Any` expansion's message before it checks the field is an `Any`, recursing once per
/// level without limit; 2,000 levels (53 KB of text) aborted the test process.
#[test]
fn deeply_nested_any_expansions_are_an_error() {
    for depth in [2_000, 100_000] {
        let text = "[x/inference.ModelConfig] {".repeat(depth);
        let error = parse_config_text(&text).map(|_| ()).expect_err("deeply nested Any expansions");
        assert_eq!(variant(&error), "ConfigParse", "{error}");
        assert!(error.to_string().ends_with("nesting deeper than 100 levels at byte 2700"), "{error}");
    }
    // One level is still the parser's own error.
    let error = parse_config_text("[x/inference.ModelConfig] { }").map(|_| ()).expect_err("not an Any");
    assert!(!error.to_string().contains("nesting"), "{error}");
}
