//! The output formats by name: every tool-call and reasoning parser name Dynamo 1.6.1's workers
//! may put in their model card (`runtime_config.tool_call_parser` / `reasoning_parser`), each
//! mapped to the model family's markup.

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks (Hermes, Qwen 2.5, …).
    Hermes,
    /// The whole output a JSON object `{"name": …, "parameters": {…}}` (several joined by `;`),
    /// maybe after `<|python_tag|>` (Llama 3.1-3.3).
    Llama3Json,
    /// `[TOOL_CALLS]` then a JSON array of calls, or `name[ARGS]{…}` (Mistral).
    Mistral,
    /// A Python list of calls with keyword arguments, `[f(a=1), g()]` (Llama 3.2 / 4).
    Pythonic,
    /// `<TOOLCALL>[{…}, …]</TOOLCALL>` (Nemotron's Llama derivatives); also Dynamo's `default`.
    NemotronDeci,
    /// `<tool_calls>[{…}, …]</tool_calls>` (Jamba).
    Jamba,
    /// `functools[{…}, …]` (Phi-4-mini).
    Phi4,
    /// `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name` and the arguments
    /// in a fenced JSON block (DeepSeek V3, R1).
    DeepseekV3,
    /// `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{…}<｜tool▁call▁end｜>` (DeepSeek V3.1).
    DeepseekV31,
    /// DSML invocations in `<｜DSML｜function_calls>` (DeepSeek V3.2).
    DeepseekV32,
    /// DSML invocations in `<｜DSML｜tool_calls>` (DeepSeek V4).
    DeepseekV4,
    /// DSML invocations in `<｜DSML｜ calls>` (DeepSeek V4.1).
    DeepseekV41,
    /// `<tool_call><function=name><parameter=key>value</parameter></function></tool_call>`
    /// (Qwen3-Coder, Qwen3.5, Nemotron Nano).
    Qwen3Coder,
    /// `<tool_call>` blocks holding a `<function=…>` invocation or a hermes JSON call (Qwen3).
    Qwen3,
    /// `<minimax:tool_call><invoke name="f"><parameter name="k">v</parameter></invoke>…`.
    MinimaxM2,
    /// MiniMax-M2's invocations with each tag behind the `]<]minimax[>[` namespace token and
    /// parameters as elements named after the key.
    MinimaxM3,
    /// `<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>` (GLM-4.5 to 4.7).
    Glm,
    /// `<|tool_calls_section_begin|><|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{…}`
    /// (Kimi K2, K2.5).
    KimiK2,
    /// Kimi K3's XTML: `<|open|>call tool="name"<|sep|><|open|>argument key="k" …`.
    KimiK3,
    /// gpt-oss's harmony: `<|channel|>commentary to=functions.name <|constrain|>json<|message|>{…}<|call|>`.
    Harmony,
    /// `<|tool_call>call:name{key:<|"|>text<|"|>,n:1}<tool_call|>` (Gemma 4).
    Gemma4,
    /// `<|message_model|>name<|content_invoke_tool_json|>{"name": …, "args": {…}}<|end_message|>`.
    Inkling,
    /// ATEM invocations, `<atem:function_calls><atem:invoke name="f">…` (Muse Glimmer).
    MuseGlimmer,
}

/// Every tool-call parser name, with the format it selects (aliases included).
pub const TOOL_CALL_PARSERS: [(&str, ToolCallFormat); 36] = [
    ("hermes", ToolCallFormat::Hermes),
    ("qwen25", ToolCallFormat::Hermes),
    ("qwen3", ToolCallFormat::Qwen3),
    ("default", ToolCallFormat::NemotronDeci),
    ("llama3_json", ToolCallFormat::Llama3Json),
    ("mistral", ToolCallFormat::Mistral),
    ("pythonic", ToolCallFormat::Pythonic),
    ("phi4", ToolCallFormat::Phi4),
    ("nemotron_deci", ToolCallFormat::NemotronDeci),
    ("jamba", ToolCallFormat::Jamba),
    ("harmony", ToolCallFormat::Harmony),
    ("deepseek_v3", ToolCallFormat::DeepseekV3),
    ("deepseek_v3_1", ToolCallFormat::DeepseekV31),
    ("deepseek_v3_2", ToolCallFormat::DeepseekV32),
    ("deepseek_v4", ToolCallFormat::DeepseekV4),
    ("deepseek-v4", ToolCallFormat::DeepseekV4),
    ("deepseekv4", ToolCallFormat::DeepseekV4),
    ("deepseek_v41", ToolCallFormat::DeepseekV41),
    ("qwen3_coder", ToolCallFormat::Qwen3Coder),
    ("nemotron_nano", ToolCallFormat::Qwen3Coder),
    ("minimax_m2", ToolCallFormat::MinimaxM2),
    ("minimax_m3", ToolCallFormat::MinimaxM3),
    ("minimax-m3", ToolCallFormat::MinimaxM3),
    ("minimax_m3_nom", ToolCallFormat::MinimaxM3),
    ("minimax-m3-nom", ToolCallFormat::MinimaxM3),
    ("glm45", ToolCallFormat::Glm),
    ("glm47", ToolCallFormat::Glm),
    ("kimi_k2", ToolCallFormat::KimiK2),
    ("kimi_k25", ToolCallFormat::KimiK2),
    ("kimi_k3", ToolCallFormat::KimiK3),
    ("kimi-k3", ToolCallFormat::KimiK3),
    ("gemma4", ToolCallFormat::Gemma4),
    ("gemma-4", ToolCallFormat::Gemma4),
    ("inkling", ToolCallFormat::Inkling),
    ("muse", ToolCallFormat::MuseGlimmer),
    ("muse_glimmer", ToolCallFormat::MuseGlimmer),
];

impl ToolCallFormat {
    /// The names `--dyn-tool-call-parser` takes.
    pub const NAMES: [&'static str; 36] = {
        let mut names = [""; 36];
        let mut i = 0;
        while i < names.len() {
            names[i] = TOOL_CALL_PARSERS[i].0;
            i += 1;
        }
        names
    };

    pub fn from_name(name: &str) -> Option<ToolCallFormat> {
        TOOL_CALL_PARSERS.iter().find(|(known, _)| *known == name).map(|(_, format)| *format)
    }

    /// Marker strings that tokenizers often hold as special tokens, which detokenizing would
    /// otherwise drop.
    pub(super) fn markers(self) -> &'static [&'static str] {
        use ToolCallFormat::*;
        match self {
            Hermes => &["<tool_call>", "</tool_call>"],
            Llama3Json => &["<|python_tag|>"],
            Mistral => &["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"],
            // Llama 4's `<|python_start|>` / `<|python_end|>` may go: the list's brackets suffice.
            Pythonic => &[],
            NemotronDeci => &["<TOOLCALL>", "</TOOLCALL>"],
            Jamba => &["<tool_calls>", "</tool_calls>"],
            Phi4 => &["functools"],
            DeepseekV3 | DeepseekV31 => &[
                "<｜tool▁calls▁begin｜>",
                "<｜tool▁calls▁end｜>",
                "<｜tool▁call▁begin｜>",
                "<｜tool▁call▁end｜>",
                "<｜tool▁sep｜>",
            ],
            DeepseekV32 | DeepseekV4 | DeepseekV41 => &["｜DSML｜"],
            Qwen3Coder | Qwen3 | Glm => {
                &["<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"]
            }
            MinimaxM2 => &["<minimax:tool_call>", "</minimax:tool_call>"],
            MinimaxM3 => &["]<]minimax[>["],
            KimiK2 => &[
                "<|tool_calls_section_begin|>",
                "<|tool_calls_section_end|>",
                "<|tool_call_begin|>",
                "<|tool_call_end|>",
                "<|tool_call_argument_begin|>",
            ],
            KimiK3 => &["<|open|>", "<|close|>", "<|sep|>"],
            Harmony => &["<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|call|>", "<|end|>"],
            Gemma4 => &["<|tool_call>", "<tool_call|>", "<|\"|>"],
            Inkling => &["<|message_model|>", "<|content_invoke_tool_json|>", "<|end_message|>"],
            MuseGlimmer => &[],
        }
    }
}

/// How a model family marks its reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// Reasoning is what the model writes between `<think>` and `</think>` (Qwen3, GLM, …).
    Think,
    /// The chat template opens `<think>`: the output starts as reasoning until `</think>`
    /// (DeepSeek-R1 and its distillations, Step3, Nemotron Nano).
    DeepseekR1,
    /// `<think>` reasoning ended early by a DSML tool block (DeepSeek V4).
    DeepseekV4,
    /// Starts inside `<think>`, ended early by a `<tool_call>` (Nemotron 3).
    NemotronV3,
    /// `◁think▷ … ◁/think▷` (Kimi-VL, Kimi 1.5).
    Kimi,
    /// Starts inside `<think>`, ended early by Kimi's tool-call section (Kimi K2, K2.5).
    KimiK25,
    /// XTML's `<|open|>think<|sep|> … <|close|>think<|sep|>`, the opener usually in the prompt.
    KimiK3,
    /// `[THINK] … [/THINK]`, the output starting inside (Magistral).
    Mistral,
    /// harmony channels: `analysis` is reasoning, `final` the answer (gpt-oss).
    GptOss,
    /// `Here is my thought process:` … `Here is my response:` (Granite 3.2+).
    Granite,
    /// Nothing is split off; the answer's text gets the `<think>` the template opened (MiniMax).
    MinimaxAppendThink,
    /// Starts inside `<think>`, ended early by a MiniMax invocation (MiniMax M2).
    MinimaxM2,
    /// `<mm:think> … </mm:think>`, the opener usually in the prompt (MiniMax M3).
    MinimaxM3,
    /// `<|channel>thought … <channel|>` (Gemma 4).
    Gemma4,
    /// `<|content_thinking|>` messages are reasoning, `<|content_text|>` ones the answer.
    Inkling,
    /// Messages addressed `to=self` are reasoning, `to=user` the answer (Muse Glimmer).
    MuseGlimmer,
}

/// Every reasoning parser name, with the format it selects (aliases included).
pub const REASONING_PARSERS: [(&str, ReasoningFormat); 36] = [
    ("think", ReasoningFormat::Think),
    ("basic", ReasoningFormat::Think),
    ("qwen3", ReasoningFormat::Think),
    ("qwen3_coder", ReasoningFormat::Think),
    ("glm45", ReasoningFormat::Think),
    ("glm47", ReasoningFormat::Think),
    ("nemotron_deci", ReasoningFormat::Think),
    ("deepseek_r1", ReasoningFormat::DeepseekR1),
    ("deepseek_v3", ReasoningFormat::DeepseekR1),
    ("deepseek_v3_1", ReasoningFormat::DeepseekR1),
    ("deepseek_v3_2", ReasoningFormat::DeepseekR1),
    ("step3", ReasoningFormat::DeepseekR1),
    ("nemotron_nano", ReasoningFormat::DeepseekR1),
    ("deepseek_v4", ReasoningFormat::DeepseekV4),
    ("deepseek-v4", ReasoningFormat::DeepseekV4),
    ("deepseekv4", ReasoningFormat::DeepseekV4),
    ("deepseek_v41", ReasoningFormat::DeepseekV4),
    ("nemotron_v3", ReasoningFormat::NemotronV3),
    ("nemotron3", ReasoningFormat::NemotronV3),
    ("kimi", ReasoningFormat::Kimi),
    ("kimi_k2", ReasoningFormat::KimiK25),
    ("kimi_k25", ReasoningFormat::KimiK25),
    ("kimi_k3", ReasoningFormat::KimiK3),
    ("kimi-k3", ReasoningFormat::KimiK3),
    ("mistral", ReasoningFormat::Mistral),
    ("gpt_oss", ReasoningFormat::GptOss),
    ("granite", ReasoningFormat::Granite),
    ("minimax_append_think", ReasoningFormat::MinimaxAppendThink),
    ("minimax_m2", ReasoningFormat::MinimaxM2),
    ("minimax_m3", ReasoningFormat::MinimaxM3),
    ("minimax-m3", ReasoningFormat::MinimaxM3),
    ("gemma4", ReasoningFormat::Gemma4),
    ("gemma-4", ReasoningFormat::Gemma4),
    ("inkling", ReasoningFormat::Inkling),
    ("muse", ReasoningFormat::MuseGlimmer),
    ("muse_glimmer", ReasoningFormat::MuseGlimmer),
];

impl ReasoningFormat {
    /// The names `--dyn-reasoning-parser` takes (`think` is Tritium's own name for `basic`).
    pub const NAMES: [&'static str; 36] = {
        let mut names = [""; 36];
        let mut i = 0;
        while i < names.len() {
            names[i] = REASONING_PARSERS[i].0;
            i += 1;
        }
        names
    };

    pub fn from_name(name: &str) -> Option<ReasoningFormat> {
        REASONING_PARSERS.iter().find(|(known, _)| *known == name).map(|(_, format)| *format)
    }

    /// Marker strings that tokenizers often hold as special tokens.
    pub(super) fn markers(self) -> &'static [&'static str] {
        use ReasoningFormat::*;
        match self {
            Think | DeepseekR1 | DeepseekV4 | NemotronV3 | KimiK25 | MinimaxAppendThink | MinimaxM2 => &["<think>", "</think>"],
            Kimi => &["◁think▷", "◁/think▷"],
            KimiK3 => &["<|open|>", "<|close|>", "<|sep|>"],
            Mistral => &["[THINK]", "[/THINK]"],
            GptOss => &["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"],
            Granite => &[],
            MinimaxM3 => &["<mm:think>", "</mm:think>"],
            Gemma4 => &["<|channel>", "<channel|>"],
            Inkling => &[
                "<|message_model|>",
                "<|content_thinking|>",
                "<|content_text|>",
                "<|content_invoke_tool_json|>",
                "<|end_message|>",
                "<|content_model_end_sampling|>",
            ],
            MuseGlimmer => &["<|start|>", "<|message|>", "<|eom|>", "<|eot|>"],
        }
    }
}
