use minijinja::Environment;
use proptest::prelude::*;
use serde_json::{Value as Json, json};

use super::*;
use crate::preprocess::template::{environment, syntax};

const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const QWEN: &str = "{%- for message in messages %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";
const LLAMA: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}";
/// Operands of every kind the rewrite takes, and tags it must leave alone.
const MIXED: &str = "{% for m in messages %}{{ 'n=' + m.name + '/' + m['tags'][0] + m.tags.1 + \"\\\"\" }}|{{ '' + loop.index }}|\
                     {{ 'a' + 'b' + m.role|upper|lower }}|{{ m.role + 'x' }}|{{ 'x' + m.role if m.role else 'none' }}|\
                     {{ 'x' + m.role|default('?') }}|{{ 'x' ~ m.content }}{% raw %}{{ 'r' + m }}{% endraw %}\n{% endfor %}";

/// A chain over several lines, a bare name, a literal holding a line break.
const MULTILINE: &str = "{% for m in messages %}\n{{ 'p' + bos_token +\n m.role\n + 'x\ny' + m.content|trim }}\n{{ 'q' + m.name }}{% endfor %}";

fn split(source: &str) -> Option<String> {
    split_concatenations(source, syntax().unwrap())
}

#[test]
fn a_chatml_turn_is_written_one_operand_at_a_time() {
    let split = split(SMOLLM2).unwrap();
    let checked = |x: &str| format!("{x} if {x} is string else '' + {x}");
    let turn = format!(
        "{{{{'<|im_start|>' }}}}{{{{ {} }}}}{{{{ '\n' }}}}{{{{ {} }}}}{{{{ '<|im_end|>' }}}}{{{{ '\n'}}}}",
        checked("message['role']"),
        checked("message['content']")
    );
    assert!(split.contains(&turn), "{split}");
    assert!(split.starts_with("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"));
    assert!(split.ends_with("{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"));
    assert_eq!(split.matches('\n').count(), SMOLLM2.matches('\n').count(), "every line keeps its number");
}

#[test]
fn whitespace_control_and_filters_stay_where_they_were() {
    assert_eq!(split("{{- 'a' + b -}}").unwrap(), "{{- 'a' }}{{ b if b is string else '' + b -}}");
    assert_eq!(
        split("x {{ 'a\\'' + m.c | trim + m[0] }} y").unwrap(),
        "x {{ 'a\\'' }}{{ m.c | trim if m.c | trim is string else '' + m.c | trim }}{{ m[0] if m[0] is string else '' + m[0] }} y"
    );
}

#[test]
fn every_line_keeps_its_number() {
    for source in [SMOLLM2, QWEN, LLAMA, MIXED, MULTILINE] {
        assert_eq!(split(source).unwrap().matches('\n').count(), source.matches('\n').count(), "{source}");
    }
}

#[test]
fn other_tags_are_left_as_they_are() {
    for source in [
        "{{ a + b }}",
        "{{ 'a' }}",
        "{{ 'a' + b * c }}",
        "{{ 'a' + f(x) }}",
        "{{ 'a' + b if c else d }}",
        "{{ 'a' + b|join(',') }}",
        "{{ 'a' + b|random }}",
        "{{ 'a' + not b }}",
        "{{ 'a' + (b) }}",
        "{{ 'a'|upper + b }}",
        "{{ 'a' ~ b }}",
        "{{ 'a' + b is defined }}",
        "{% raw %}{{ 'a' + b }}{% endraw %}",
        "{% set x = 'a' + b %}{{ x }}",
        "{{ 'a' + ",
        "{{ 'a' + m[\n'k'] }}",
    ] {
        assert_eq!(split(source), None, "{source}");
    }
}

fn env_with(source: &str) -> Environment<'static> {
    let mut env = environment();
    env.add_template_owned("chat", source.to_owned()).unwrap();
    env
}

fn render(env: &Environment<'_>, context: &Json) -> Result<String, String> {
    env.get_template("chat").unwrap().render(minijinja::value::Value::from(minijinja::value::Serde(context))).map_err(|e| e.to_string())
}

fn field() -> impl Strategy<Value = Option<Json>> {
    prop_oneof![
        4 => "[a-z {}<|>\\n'é東]{0,12}".prop_map(|text| Some(Json::String(text))),
        1 => Just(None),
        1 => Just(Some(Json::Null)),
        1 => any::<i32>().prop_map(|n| Some(json!(n))),
        1 => Just(Some(json!(["t0", "t1"]))),
        1 => Just(Some(json!(true))),
    ]
}

fn message() -> impl Strategy<Value = Json> {
    (field(), field(), field(), field()).prop_map(|(role, content, name, tags)| {
        let mut message = serde_json::Map::new();
        for (key, value) in [("role", role), ("content", content), ("name", name), ("tags", tags)] {
            if let Some(value) = value {
                message.insert(key.into(), value);
            }
        }
        Json::Object(message)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The split template renders the same text, or fails with the same error, as the original.
    #[test]
    fn a_split_template_renders_what_the_original_does(
        messages in prop::collection::vec(message(), 0..5),
        add_generation_prompt in any::<bool>(),
    ) {
        let context = json!({"messages": messages, "add_generation_prompt": add_generation_prompt, "bos_token": "<s>"});
        for source in [SMOLLM2, QWEN, LLAMA, MIXED, MULTILINE] {
            let (original, rewritten) = (env_with(source), env_with(&split(source).unwrap()));
            prop_assert_eq!(render(&original, &context), render(&rewritten, &context), "{}", source);
        }
    }
}
