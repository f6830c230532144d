//! `tritium serve -i`: a chat in the terminal with the first language model served, through the
//! same preprocessing, router and engine as the HTTP routes. Each line read from stdin is a user
//! turn; the answer streams to stdout. `/reset` forgets the conversation; `/quit` or the end of
//! input ends the session, and with it the server.

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tritium_backend_api::llm::ModelKind;
use tritium_openai_bridge::pipeline::{ModelRef, TextEvent, generate_text};
use tritium_openai_bridge::routes::LlmHub;
use tritium_openai_bridge::sampling::CompletionOptions;

use super::LlmFrontend;

/// Runs the session until `/quit` or the end of stdin.
pub async fn chat(llm: Arc<LlmFrontend>) -> std::io::Result<()> {
    let Some(model) = llm.models().into_iter().find(|m| m.kind == ModelKind::Generate).map(|m| m.name) else {
        eprintln!("tritium: -i needs a language model (--model-path); none is served");
        return Ok(());
    };
    let mut out = std::io::stdout();
    writeln!(out, "Chatting with {model}. /reset forgets the conversation, /quit ends it.")?;
    let mut history: Vec<Value> = Vec::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let Some(line) = lines.next_line().await? else { break };
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                history.clear();
                continue;
            }
            text => history.push(json!({"role": "user", "content": text})),
        }
        match answer(&llm, &model, &history, &mut out).await {
            Ok(text) => history.push(json!({"role": "assistant", "content": text})),
            Err(error) => {
                writeln!(out, "\n[error: {error}]")?;
                history.pop();
            }
        }
    }
    writeln!(out)?;
    out.flush()
}

/// Streams the model's answer to `out`; returns its text.
async fn answer(
    llm: &LlmFrontend,
    model: &str,
    history: &[Value],
    out: &mut std::io::Stdout,
) -> Result<String, Box<dyn std::error::Error>> {
    let pre = llm.preprocessor(model)?;
    let prompt = pre.render_chat(history, true, None)?;
    let ids = pre.encode_off_runtime(prompt, false).await?;
    let observer = llm.metrics().observer(model, "interactive");
    let options = CompletionOptions::default();
    let mut stream = generate_text(llm, &pre, ModelRef::latest(model), &options, ids, None, observer).await?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            TextEvent::Delta { text: delta, .. } => {
                write!(out, "{delta}")?;
                out.flush()?;
                text.push_str(&delta);
            }
            TextEvent::Finished { .. } => break,
        }
    }
    writeln!(out)?;
    Ok(text)
}
