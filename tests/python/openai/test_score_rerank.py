"""Scoring with an embedding model (issue 61): vLLM's `/v1/score` (`text_1` against `text_2`) and the Jina/Cohere
rerank API (`/v1/rerank`, `/rerank`, `/v2/rerank`) on the real all-MiniLM-L6-v2. A score is the cosine similarity
of the two texts' embeddings, checked against `/v1/embeddings`' own vectors; the rerank order follows it."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest

EMBEDDER = "minilm"
QUERY = "A man is eating food."
DOCUMENTS = ["Quarterly tax returns are due in April.", "A man is eating a piece of bread.", "The new movie is awesome."]


def post(server, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(server.http_url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def embeddings(server, texts: list[str]) -> list[list[float]]:
    status, answer = post(server, "/v1/embeddings", {"model": EMBEDDER, "input": texts})
    assert status == 200, answer
    return [item["embedding"] for item in answer["data"]]


def test_score_is_the_cosine_of_the_embeddings(llm_server):
    status, answer = post(llm_server, "/v1/score", {"model": EMBEDDER, "text_1": QUERY, "text_2": DOCUMENTS})
    assert status == 200, answer
    assert answer["object"] == "list" and [d["index"] for d in answer["data"]] == [0, 1, 2]
    vectors = embeddings(llm_server, [QUERY, *DOCUMENTS])
    for item, vector in zip(answer["data"], vectors[1:]):
        assert item["object"] == "score" and abs(item["score"] - cosine(vectors[0], vector)) < 1e-4, (item, answer)
    assert answer["usage"]["prompt_tokens"] > 0
    # As many text_1 as text_2 pair up element by element; one against one works at /score too.
    status, pairwise = post(llm_server, "/score", {"model": EMBEDDER, "text_1": [QUERY, DOCUMENTS[0]], "text_2": [DOCUMENTS[1], DOCUMENTS[0]]})
    assert status == 200 and abs(pairwise["data"][1]["score"] - 1.0) < 1e-4, pairwise


def test_rerank_orders_the_documents_by_relevance(llm_server):
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        status, answer = post(llm_server, path, {"model": EMBEDDER, "query": QUERY, "documents": DOCUMENTS})
        assert status == 200, (path, answer)
        results = answer["results"]
        assert [r["index"] for r in results][0] == 1, results
        assert results == sorted(results, key=lambda r: -r["relevance_score"]), results
        assert results[0]["document"] == {"text": DOCUMENTS[1]}
    status, answer = post(llm_server, "/v1/rerank",
                          {"model": EMBEDDER, "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 1, "return_documents": False})  # fmt: skip
    assert status == 200 and len(answer["results"]) == 1 and "document" not in answer["results"][0], answer
    assert answer["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("path,body,field", [
    ("/v1/score", {"model": EMBEDDER, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_2"),
    ("/v1/score", {"model": EMBEDDER, "text_1": "a", "text_2": ["c", ""]}, "text_2[1]"),
    ("/v1/rerank", {"model": EMBEDDER, "query": "", "documents": ["x"]}, "query"),
    ("/v1/rerank", {"model": EMBEDDER, "query": "q", "documents": []}, "documents"),
])  # fmt: skip
def test_bad_requests_name_their_field(llm_server, path, body, field):
    status, answer = post(llm_server, path, body)
    assert status == 400 and answer["error"]["param"] == field, answer


def test_a_language_model_is_refused_by_name(llm_server):
    status, answer = post(llm_server, "/v1/rerank", {"model": "smollm2", "query": "q", "documents": ["x"]})
    assert status == 400 and "is a language model" in answer["error"]["message"] and "not /v1/rerank" in answer["error"]["message"], answer
    status, answer = post(llm_server, "/v1/completions", {"model": EMBEDDER, "prompt": "q"})
    assert status == 400 and "it serves /v1/embeddings, /v1/score and /v1/rerank" in answer["error"]["message"], answer
