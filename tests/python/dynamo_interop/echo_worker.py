"""A Dynamo worker written on Dynamo's own Python API, as users write theirs: it serves a
token-input model that answers with the prompt's tokens, one per frame, until `max_tokens`
(finish "length") or the prompt's end (finish "stop"; also when no `max_tokens` is sent). Deterministic, so Dynamo's frontend
and Tritium's can be compared text for text.

With `--text` it takes OpenAI requests as the client sent them (`ModelInput.Text`, as SGLang's
worker registers with its own tokenizer) and answers with OpenAI chunk objects: the words of the
last message (or prompt), one per chunk, up to `max_tokens` words; a request offering tools gets a
call of the first tool, its arguments in two pieces.

With `--role decode` it is the decode side of a disaggregated pair (`worker_type` decode, needing a
prefill worker): it answers only requests that carry a prefill worker's handoff for their prompt
(`prefill_result`), else fails; with `--role prefill` it is that prefill worker (model type Prefill,
needing a decode worker), handing over the prompt's length as vLLM's hands over its KV parameters.

With `--answer-user` it answers with the last user message's text instead of the whole prompt (decoded
with the model's tokenizer, encoded again): a scripted model, whose output is whatever the test writes,
for comparing how the two frontends parse one family's markup; `--tool-call-parser` and
`--reasoning-parser` name the parsers in its card's `runtime_config`, as `dynamo.vllm` publishes them.

With `--text-task embed|classify|rerank` it is a text-input model of that task instead (the request as the
client sent it in, one answer out: vectors of word and character counts, "long"/"short" labels, word-overlap scores).

With `--embed` it is an embedding model instead: each input's vector is made of its tokens
(count, sum, first, last), sent as base64 as Dynamo's vLLM worker sends it, so both frontends' vectors can be compared number for number.

Usage: python echo_worker.py MODEL_DIR MODEL_NAME [--token-budget N] [--delay SECONDS] [--embed] [--text] [--text-task embed|classify|rerank] [--role prefill|decode] [--lora NAME]
(discovery and planes from Dynamo's own variables: DYN_DISCOVERY_BACKEND, DYN_FILE_KV, ...)."""

import argparse
import asyncio
import base64
import json
import struct

import uvloop
from dynamo.llm import ModelInput, ModelRuntimeConfig, ModelType, WorkerType, register_model
from dynamo.runtime import DistributedRuntime, dynamo_worker


class Echo:
    def __init__(self, delay: float, lora: str, decode: bool = False, tokenizer=None) -> None:
        self.delay = delay
        self.lora = lora
        self.decode = decode
        # With --answer-user: the model's tokenizer, to answer the last user message's text.
        self.tokenizer = tokenizer

    def user_text(self, prompt: list[int]) -> list[int]:
        """The tokens of the last user message in a prompt rendered by tiny_model.py's template."""
        text = self.tokenizer.decode(prompt, skip_special_tokens=True)
        message = text.rsplit("user: ", 1)[-1]
        message = message[: -len("\nassistant:")] if message.endswith("\nassistant:") else message
        return self.tokenizer.encode(message, add_special_tokens=False).ids

    async def generate(self, request, context):
        guided = (request.get("sampling_options") or {}).get("guided_decoding")
        if guided:
            # What the frontend asked of the engine's guided decoding, for the tests to compare.
            print("GUIDED " + json.dumps(guided, sort_keys=True), flush=True)
        limit = request["stop_conditions"].get("max_tokens")
        prompt = request["token_ids"]
        if self.decode:
            handed = ((request.get("prefill_result") or {}).get("disaggregated_params") or {}).get("kv_transfer_params") or {}
            if handed.get("prompt_len") != len(prompt) or not (request.get("routing") or {}).get("prefill_worker_id"):
                yield {"token_ids": [], "finish_reason": {"error": "no prefill handoff for this prompt"}}
                return
        if request.get("model") == self.lora:
            # The adapter (as vLLM's worker, told by the request's model name) answers the prompt backwards.
            prompt = prompt[::-1]
        if self.tokenizer is not None:
            prompt = self.user_text(prompt)
        tokens = prompt if limit is None else prompt[:limit]
        for i, token in enumerate(tokens):
            if context.is_stopped():
                yield {"token_ids": [], "finish_reason": "cancelled"}
                return
            last = i == len(tokens) - 1
            reason = ("length" if limit is not None and len(tokens) == limit else "stop") if last else None
            yield {"token_ids": [token], "finish_reason": reason}
            await asyncio.sleep(self.delay)


async def text(request, context):
    """A text-input worker's answer: OpenAI chunk objects, as SGLang's worker sends them with its own tokenizer."""
    chat = "messages" in request
    if chat:
        content = request["messages"][-1].get("content") or ""
        source = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    else:
        source = request["prompt"] if isinstance(request["prompt"], str) else str(request["prompt"])
    words = source.split()
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    reason = "length" if limit is not None and len(words) > limit else "stop"
    words = words if limit is None else words[:limit]
    base = {"id": f"echo-{context.id()}", "created": 1700000000, "model": request["model"]}
    tools = request.get("tools") if chat else None

    def chunk(payload, finish=None):
        body = {"index": 0, "finish_reason": finish}
        if chat:
            body["delta"] = payload
        else:
            body["text"] = payload
        return base | {"object": "chat.completion.chunk" if chat else "text_completion", "choices": [body]}

    if tools:
        name = tools[0]["function"]["name"]
        first = {"index": 0, "id": "call-1", "type": "function", "function": {"name": name, "arguments": '{"words": '}}
        yield chunk({"role": "assistant", "tool_calls": [first]})
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": f"{len(words)}}}"}}]}, "tool_calls")
    else:
        for i, word in enumerate(words):
            if context.is_stopped():
                return
            piece = word if i == 0 else " " + word
            last = i == len(words) - 1
            yield chunk({"role": "assistant", "content": piece} if chat else piece, reason if last else None)
    usage = {"prompt_tokens": len(source.split()), "completion_tokens": len(words), "total_tokens": len(source.split()) + len(words)}
    yield base | {"object": "chat.completion.chunk" if chat else "text_completion", "choices": [], "usage": usage}


def texts_of(value) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


async def text_embed(request, context):
    """A text-input embedding worker (SGLang's with its own tokenizer): each input's vector is (words, characters)."""
    texts = texts_of(request["input"])
    data = [{"object": "embedding", "index": i, "embedding": [float(len(t.split())), float(len(t))]} for i, t in enumerate(texts)]
    words = sum(len(t.split()) for t in texts)
    yield {"object": "list", "model": request["model"], "data": data, "usage": {"prompt_tokens": words, "total_tokens": words}}


async def text_classify(request, context):
    """A text-input classifier (`dynamo.triton --task classify`'s kind): "long" when an input has over 3 words."""
    texts = texts_of(request["input"])
    data = []
    for i, text in enumerate(texts):
        long = len(text.split()) > 3
        data.append({"index": i, "label": "long" if long else "short", "probs": [0.2, 0.8] if long else [0.9, 0.1], "num_classes": 2})
    words = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": words, "total_tokens": words, "completion_tokens": 0}
    yield {"id": f"classify-{context.id()}", "object": "list", "created": 1700000000, "model": request["model"], "data": data, "usage": usage}


async def text_rerank(request, context):
    """A text-input reranker: a document's score is the share of the query's words it holds; Dynamo's shape (a list)."""
    query = set(request["query"].lower().split())
    results = []
    for i, document in enumerate(request["documents"]):
        score = len(query & set(document.lower().split())) / max(len(query), 1)
        results.append({"index": i, "score": score, "document": document})
    results.sort(key=lambda r: -r["score"])
    yield results[: request.get("top_n") or len(results)]


async def prefill(request, context):
    """A prefill worker's answer, as vLLM's: one token and what its decode worker needs."""
    prompt = request["token_ids"]
    usage = {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1, "prompt_tokens_details": {"cached_tokens": 0}}
    yield {"token_ids": prompt[:1], "disaggregated_params": {"kv_transfer_params": {"prompt_len": len(prompt)}},
           "completion_usage": usage, "finish_reason": "length"}  # fmt: skip


async def embed(request, context):
    """As Dynamo 1.6.1's vLLM handler answers: each vector as base64 of little-endian float32s."""
    vectors = [[len(t), sum(t), t[0] if t else -1, t[-1] if t else -1] for t in request["token_ids"]]
    encoded = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii") for v in vectors]
    tokens = sum(len(t) for t in request["token_ids"])
    yield {"embeddings": encoded, "prompt_tokens": tokens, "total_tokens": tokens}


def logged(handler):
    """`handler`, printing a line per request (--log-requests: the tests see which worker got it)."""

    async def served(request, context):
        print(f"REQUEST {request.get('model')}", flush=True)
        async for item in handler(request, context):
            yield item

    return served


@dynamo_worker()
async def main(runtime: DistributedRuntime, args):
    import os

    namespace = os.environ.get("DYN_NAMESPACE", "dynamo")
    endpoint = runtime.endpoint(f"{namespace}.echo.generate")
    config = ModelRuntimeConfig()
    if args.tool_call_parser:
        config.tool_call_parser = args.tool_call_parser
    if args.reasoning_parser:
        config.reasoning_parser = args.reasoning_parser
    tokenizer = None
    if args.answer_user:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    if args.token_budget:
        budget = {"combined_limit": args.token_budget, "reject_prompt_overflow": True, "reject_total_overflow": False}
        config.set_engine_specific("token_budget", json.dumps(budget))
    if args.role:
        roles = {"prefill": (WorkerType.Prefill, WorkerType.Decode), "decode": (WorkerType.Decode, WorkerType.Prefill)}
        role, needed = roles[args.role]
        endpoint = runtime.endpoint(f"{namespace}.{args.role}.generate")
        model_type = ModelType.Prefill if args.role == "prefill" else ModelType.Chat | ModelType.Completions
        await register_model(ModelInput.Tokens, model_type, endpoint, args.model_dir, args.model_name, worker_type=role,
                             needs=[[needed]], kv_cache_block_size=16)  # fmt: skip
        await endpoint.serve_endpoint(prefill if args.role == "prefill" else Echo(args.delay, "", decode=True).generate)
        return
    if args.text_task:
        kinds = {"embed": (ModelType.Embedding, text_embed), "classify": (ModelType.Classify, text_classify),
                 "rerank": (ModelType.Rerank, text_rerank)}  # fmt: skip
        model_type, handler = kinds[args.text_task]
        await register_model(ModelInput.Text, model_type, endpoint, args.model_dir, args.model_name, worker_type=WorkerType.Aggregated)
        await endpoint.serve_endpoint(handler)
        return
    if args.text:
        await register_model(
            ModelInput.Text, ModelType.Chat | ModelType.Completions, endpoint, args.model_dir, args.model_name,
            worker_type=WorkerType.Aggregated,
        )  # fmt: skip
        await endpoint.serve_endpoint(logged(text) if args.log_requests else text)
        return
    await register_model(
        ModelInput.Tokens,
        ModelType.Embedding if args.embed else ModelType.Chat | ModelType.Completions,
        endpoint,
        args.model_dir,
        args.model_name,
        worker_type=WorkerType.Aggregated,
        kv_cache_block_size=16,
        runtime_config=config,
    )
    if args.lora:
        # A LoRA adapter as vLLM's worker registers one: its own card on the same endpoint.
        await register_model(
            ModelInput.Tokens,
            ModelType.Chat | ModelType.Completions,
            endpoint,
            args.model_dir,
            worker_type=WorkerType.Aggregated,
            kv_cache_block_size=16,
            runtime_config=config,
            lora_name=args.lora,
            base_model_path=args.model_dir,
        )
    handler = embed if args.embed else Echo(args.delay, args.lora, tokenizer=tokenizer).generate
    await endpoint.serve_endpoint(logged(handler) if args.log_requests else handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("model_name")
    parser.add_argument("--token-budget", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--embed", action="store_true", help="an embedding model instead")
    parser.add_argument("--role", choices=["prefill", "decode"], help="one side of a disaggregated pair instead")
    parser.add_argument("--text", action="store_true", help="a text-input model instead (OpenAI requests in, chunks out)")
    parser.add_argument("--text-task", choices=["embed", "classify", "rerank"], help="a text-input model of this task instead")
    parser.add_argument("--lora", default="", help="also serve a LoRA adapter of this name (it answers backwards)")
    parser.add_argument("--answer-user", action="store_true", help="answer the last user message's text (a scripted model)")
    parser.add_argument("--tool-call-parser", default="", help="runtime_config.tool_call_parser of the card")
    parser.add_argument("--reasoning-parser", default="", help="runtime_config.reasoning_parser of the card")
    parser.add_argument("--log-requests", action="store_true", help="print a line for each request served")
    uvloop.install()
    asyncio.run(main(parser.parse_args()))
