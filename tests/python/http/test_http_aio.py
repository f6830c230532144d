"""tritonclient.http.aio (asyncio over aiohttp) against the built-in repository: health, metadata, config, statistics,
many infers in flight at once on one client, JSON and binary tensors, compression, and errors that leave the client
and the server usable. Each test drives its own event loop with asyncio.run (no pytest-asyncio plugin).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from http_helpers import http_address


def run(tritium, body):
    """asyncio.run(body(client)) with a fresh aio client that is closed afterwards."""

    async def main():
        async with aioclient.InferenceServerClient(url=http_address(tritium)) as c:
            return await body(c)

    return asyncio.run(main())


def int32(name: str, data: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    t = httpclient.InferInput(name, list(data.shape), "INT32")
    t.set_data_from_numpy(data, binary_data=binary)
    return t


def fp32(data: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    t = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    t.set_data_from_numpy(data, binary_data=binary)
    return t


def add_sub_case(i: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32) * (i + 1) - 5 * i
    b = np.full(16, i, dtype=np.int32) - np.arange(16, dtype=np.int32)
    return a, b


def test_health_and_metadata_gathered(tritium):
    async def body(c):
        return await asyncio.gather(
            c.is_server_live(),
            c.is_server_ready(),
            c.is_model_ready("add_sub"),
            c.is_model_ready("no_such_model"),
            c.get_server_metadata(),
            c.get_model_metadata("identity_batch"),
            c.get_model_config("add_sub"),
            c.get_inference_statistics("identity"),
        )

    live, ready, add_sub_ready, unknown_ready, server, batch, config, stats = run(tritium, body)
    assert (live, ready, add_sub_ready, unknown_ready) == (True, True, True, False)
    assert server["name"] and server["version"] and "binary_tensor_data" in server["extensions"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in batch["inputs"]] == [("INPUT0", "FP32", [-1, -1])]
    assert config["name"] == "add_sub" and [i["dims"] for i in config["input"]] == [[16], [16]]
    assert [s["name"] for s in stats["model_stats"]] == ["identity"]


def test_32_concurrent_infers(tritium):
    cases = [add_sub_case(i) for i in range(32)]

    async def body(c):
        async def one(i):
            a, b = cases[i]
            # Alternate JSON and binary inputs and outputs so both codecs run concurrently.
            outputs = [httpclient.InferRequestedOutput(n, binary_data=i % 3 != 0) for n in ("OUTPUT0", "OUTPUT1")]
            inputs = [int32("INPUT0", a, i % 2 == 0), int32("INPUT1", b)]
            return await c.infer("add_sub", inputs, outputs=outputs, request_id=f"r{i}")

        return await asyncio.gather(*(one(i) for i in range(32)))

    results = run(tritium, body)
    for i, result in enumerate(results):
        a, b = cases[i]
        assert result.get_response()["id"] == f"r{i}"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_concurrent_mixed_models_and_health(tritium):
    async def body(c):
        calls = []
        for i in range(24):
            if i % 3 == 0:
                calls.append(c.infer("identity", [fp32(np.full(8, i, dtype=np.float32), i % 2 == 0)]))
            elif i % 3 == 1:
                calls.append(c.infer("identity_batch", [fp32(np.full((2, 3), i, dtype=np.float32))]))
            else:
                calls.append(c.is_server_ready())
        return await asyncio.gather(*calls)

    for i, result in enumerate(run(tritium, body)):
        if i % 3 == 0:
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full(8, i, dtype=np.float32))
        elif i % 3 == 1:
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((2, 3), i, dtype=np.float32))
        else:
            assert result is True


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_infers_gathered(tritium, algorithm):
    cases = [add_sub_case(i) for i in range(8)]

    async def body(c):
        return await asyncio.gather(*(
            c.infer(
                "add_sub", [int32("INPUT0", a), int32("INPUT1", b, binary=False)],
                request_compression_algorithm=algorithm, response_compression_algorithm=algorithm,
            )
            for a, b in cases
        ))

    for (a, b), result in zip(cases, run(tritium, body)):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_errors_among_good_requests(tritium):
    """Failing requests in the same gather as good ones: each fails alone, with Triton's status and message."""
    a, b = add_sub_case(3)

    async def body(c):
        good = [c.infer("add_sub", [int32("INPUT0", a), int32("INPUT1", b)]) for _ in range(8)]
        bad = [
            c.infer("no_such_model", [fp32(np.ones(2, dtype=np.float32))]),
            c.infer("identity", [int32("INPUT0", np.zeros(4, dtype=np.int32))]),
            c.infer("add_sub", [int32("INPUT0", np.zeros(8, dtype=np.int32)), int32("INPUT1", b)]),
            c.get_model_metadata("no_such_model"),
        ]
        results = await asyncio.gather(*good, *bad, return_exceptions=True)
        return results, await c.is_server_live()

    results, live = run(tritium, body)
    assert live is True
    for result in results[:8]:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    errors = results[8:]
    assert all(isinstance(e, InferenceServerException) for e in errors), errors
    assert [e.status() for e in errors] == ["404", "400", "400", "404"]
    assert errors[0].message().startswith("Request for unknown model")
    assert "data-type is 'INT32', but model 'identity' expects 'FP32'" in errors[1].message()
    assert "unexpected shape for input 'INPUT0' for model 'add_sub'" in errors[2].message()
    assert errors[3].message() == "Request for unknown model: 'no_such_model' is not found"


def test_statistics_count_gathered_infers(tritium):
    n = 16

    async def body(c):
        before = await c.get_inference_statistics("identity_batch")
        await asyncio.gather(*(c.infer("identity_batch", [fp32(np.ones((1, 4), dtype=np.float32))]) for _ in range(n)))
        # Triton 2.51 may count a request just after its response: wait (bounded) for the n successes.
        want = before["model_stats"][0]["inference_stats"]["success"]["count"] + n
        for _ in range(1000):
            after = await c.get_inference_statistics("identity_batch")
            if after["model_stats"][0]["inference_stats"]["success"]["count"] >= want:
                break
            await asyncio.sleep(0.01)
        return before, after

    before, after = run(tritium, body)
    (b,), (a,) = before["model_stats"], after["model_stats"]
    assert a["inference_stats"]["success"]["count"] - b["inference_stats"]["success"]["count"] == n
    assert a["inference_count"] - b["inference_count"] == n
    assert 1 <= a["execution_count"] - b["execution_count"] <= n
