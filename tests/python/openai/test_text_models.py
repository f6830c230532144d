"""Cross-encoders and classifiers on the OpenAI door (issue 61, item 4): ONNX models built here, in a Triton
model repository, whose configs set `openai_task` (`score`, `classify`) and carry MiniLM's tokenizer.json.
`/v1/score` and the rerank API read each (query, document) pair whole with the cross-encoder, `/classify`
gives each text's class probabilities and its label (the output's `label_filename`), and the numbers equal
the model's own outputs computed here from the same token ids (BERT's pair template over `/tokenize`'s ids,
with MiniLM served beside for that); the same models answer KServe with their own tensors. Wrong routes,
empty inputs and lists over the bound are refused naming the field."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from conftest import EMBED_NAME, LLM_START_TIMEOUT, model_paths
from cluster import wait_until
from helpers import finish_server, needs, start_server, start_worker
from http_helpers import json_call

WIDTH = 8
LABELS = ["negative", "neutral", "positive"]


def weights(vocab: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.normal(size=(vocab, WIDTH)).astype(np.float32),
        "types": rng.normal(size=(2, WIDTH)).astype(np.float32),
        "head": rng.normal(size=(WIDTH, classes)).astype(np.float32),
        "bias": rng.normal(size=(classes,)).astype(np.float32),
    }


def encoder(w: dict[str, np.ndarray], batch_dim: bool) -> onnx.ModelProto:
    """The mean of token + segment embeddings over the attention mask, times a head: [batch, classes]."""
    ids = ["batch", "tokens"]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ids) for name in ("input_ids", "attention_mask", "token_type_ids")]
    classes = w["head"].shape[1]
    nodes = [
        helper.make_node("Gather", ["tokens", "input_ids"], ["tok"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["seg"]),
        helper.make_node("Add", ["tok", "seg"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["logits"]),
    ]
    initializers = [numpy_helper.from_array(value, name) for name, value in w.items()]
    initializers += [numpy_helper.from_array(np.array([2], np.int64), "axis2"), numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])
    graph = helper.make_graph(nodes, "encoder", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def reference(w: dict[str, np.ndarray], rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
    out = []
    for ids, types in rows:
        emb = w["tokens"][ids] + w["types"][types]
        out.append(emb.mean(axis=0) @ w["head"] + w["bias"])
    return np.array(out)


SCORER = weights(30522, 1, seed=7)
CLASSIFIER = weights(30522, 3, seed=8)


@pytest.fixture(scope="module")
@needs("onnx", "llm", "embedding")
def repository(tmp_path_factory):
    _, minilm = model_paths()
    repo = tmp_path_factory.mktemp("text-models")
    for name, w, config in [
        ("ce", SCORER, 'max_batch_size: 0\ninput [\n{name: "input_ids" data_type: TYPE_INT64 dims: [-1, -1]},\n'
                       '{name: "attention_mask" data_type: TYPE_INT64 dims: [-1, -1]},\n'
                       '{name: "token_type_ids" data_type: TYPE_INT64 dims: [-1, -1]}\n]\n'
                       'output [{name: "logits" data_type: TYPE_FP32 dims: [-1, 1]}]\n'
                       'parameters { key: "openai_task" value { string_value: "score" } }\n'),
        ("sentiment", CLASSIFIER, 'max_batch_size: 2\ninput [\n{name: "input_ids" data_type: TYPE_INT64 dims: [-1]},\n'
                                  '{name: "attention_mask" data_type: TYPE_INT64 dims: [-1]},\n'
                                  '{name: "token_type_ids" data_type: TYPE_INT64 dims: [-1]}\n]\n'
                                  'output [{name: "logits" data_type: TYPE_FP32 dims: [3] label_filename: "labels.txt"}]\n'
                                  'parameters { key: "openai_task" value { string_value: "classify" } }\n'),
    ]:  # fmt: skip
        (repo / name / "1").mkdir(parents=True)
        onnx.save(encoder(w, batch_dim=True), repo / name / "1" / "model.onnx")
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "onnxruntime"\n{config}')
        shutil.copy(minilm / "tokenizer.json", repo / name / "tokenizer.json")
    (repo / "sentiment" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return repo


@pytest.fixture(scope="module")
def server(repository):
    _, minilm = model_paths()
    server = start_server("--model-repository", str(repository), "--model-path", str(minilm), "--model-name", EMBED_NAME,
                          timeout=LLM_START_TIMEOUT)  # fmt: skip
    yield server
    finish_server(server)


def test_a_text_model_on_a_remote_worker_is_refused_by_name_on_the_openai_door(repository, tmp_path):
    """The frontend does not hold a remote worker's tokenizer: /v1/score and /classify name why, while KServe
    reaches the same model through the worker."""
    common = ["--discovery", "file", "--discovery-dir", str(tmp_path)]
    worker = start_worker(*common, "--worker-id", "texts", "--model-repository", str(repository))
    frontend = start_server(*common)
    try:
        client = httpclient.InferenceServerClient(frontend.http_url.removeprefix("http://"))
        wait_until(lambda: client.is_model_ready("ce"), 30, "ce served through the worker")
        for path, body in (("/v1/score", {"model": "ce", "text_1": "a", "text_2": "b"}), ("/classify", {"model": "sentiment", "input": "x"})):
            status, answer = post(frontend, path, body)
            assert status == 501 and "remote worker" in answer["error"]["message"] and "openai_task" in answer["error"]["message"], answer
    finally:
        finish_server(frontend)
        finish_server(worker)


def post(server, path: str, body: dict) -> tuple[int, dict]:
    return json_call("POST", server.http_url + path, body)


def ids(server, text: str) -> list[int]:
    status, answer = post(server, "/tokenize", {"model": EMBED_NAME, "prompt": text})
    assert status == 200, answer
    return answer["tokens"]


def pair(server, a: str, b: str) -> tuple[list[int], list[int]]:
    """BERT's pair template: [CLS] a [SEP] b [SEP], segment 0 then 1."""
    first, second = ids(server, a), ids(server, b)[1:]
    return first + second, [0] * len(first) + [1] * len(second)


def sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


QUERY = "A man is eating food."
DOCUMENTS = ["Quarterly tax returns are due in April.", "A man is eating a piece of bread.", "The new movie is awesome."]


def test_score_reads_each_pair_with_the_cross_encoder(server):
    status, answer = post(server, "/v1/score", {"model": "ce", "text_1": QUERY, "text_2": DOCUMENTS})
    assert status == 200, answer
    expected = [sigmoid(logit[0]) for logit in reference(SCORER, [pair(server, QUERY, d) for d in DOCUMENTS])]
    assert [d["index"] for d in answer["data"]] == [0, 1, 2]
    assert np.allclose([d["score"] for d in answer["data"]], expected, atol=1e-5), (answer, expected)
    rows = [pair(server, QUERY, d) for d in DOCUMENTS]
    assert answer["usage"]["prompt_tokens"] == sum(len(r[0]) for r in rows)


def test_rerank_orders_by_the_cross_encoders_scores(server):
    expected = [sigmoid(logit[0]) for logit in reference(SCORER, [pair(server, QUERY, d) for d in DOCUMENTS])]
    order = sorted(range(3), key=lambda i: -expected[i])
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        status, answer = post(server, path, {"model": "ce", "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
        assert status == 200, answer
        assert [r["index"] for r in answer["results"]] == order[:2], (answer, expected)
        assert np.allclose([r["relevance_score"] for r in answer["results"]], [expected[i] for i in order[:2]], atol=1e-5)
        assert answer["results"][0]["document"]["text"] == DOCUMENTS[order[0]]


def test_classify_gives_probabilities_and_the_label_file_names(server):
    texts = ["I love this film.", "It was fine.", "Terrible service, never again."]
    status, answer = post(server, "/classify", {"model": "sentiment", "input": texts})
    assert status == 200, answer
    logits = reference(CLASSIFIER, [(ids(server, t), [0] * len(ids(server, t))) for t in texts])
    for item, row in zip(answer["data"], logits):
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert np.allclose(item["probs"], probs, atol=1e-5), (item, probs)
        assert item["label"] == LABELS[int(np.argmax(row))] and item["num_classes"] == 3
    # Three texts through a model that batches two at a time, and one text alone, agree.
    status, single = post(server, "/v1/classify", {"model": "sentiment", "input": texts[2]})
    assert status == 200 and np.allclose(single["data"][0]["probs"], answer["data"][2]["probs"], atol=1e-6), single


def test_the_same_models_answer_kserve_with_their_own_tensors(server):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    first, types = pair(server, QUERY, DOCUMENTS[1])
    inputs = []
    for name, values in (("input_ids", first), ("attention_mask", [1] * len(first)), ("token_type_ids", types)):
        tensor = httpclient.InferInput(name, [1, len(first)], "INT64")
        tensor.set_data_from_numpy(np.array([values], np.int64))
        inputs.append(tensor)
    logits = client.infer("ce", inputs).as_numpy("logits")
    status, answer = post(server, "/v1/score", {"model": "ce", "text_1": QUERY, "text_2": DOCUMENTS[1]})
    assert status == 200 and abs(answer["data"][0]["score"] - sigmoid(logits[0][0])) < 1e-5, (answer, logits)


@pytest.mark.parametrize("path,body,status,field", [
    ("/classify", {"model": "ce", "input": "x"}, 400, "model"),
    ("/v1/score", {"model": "sentiment", "text_1": "a", "text_2": "b"}, 400, "model"),
    ("/classify", {"model": EMBED_NAME, "input": "x"}, 400, "model"),
    ("/classify", {"model": "sentiment", "input": []}, 400, "input"),
    ("/classify", {"model": "sentiment", "input": ["ok", ""]}, 400, "input[1]"),
    ("/classify", {"model": "sentiment", "input": ["x"] * 2049}, 400, "input"),
    ("/classify", {"model": "absent", "input": "x"}, 404, None),
])  # fmt: skip
def test_wrong_models_and_inputs_are_refused_by_field(server, path, body, status, field):
    got, answer = post(server, path, body)
    assert got == status, answer
    if field:
        assert answer["error"]["param"] == field, answer
