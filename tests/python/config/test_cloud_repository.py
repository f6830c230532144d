"""Model repositories in object stores (issue 41, item 1): `--model-repository s3://...`, `gs://...` and
`as://...` against real emulators started here on ephemeral ports: moto's S3 server and gcp-storage-emulator
(PyPI, in this process) and Azurite (npm, scripts/install-emulators.sh). Each serves a small repository that
tritonclient reads (metadata, infer, repository index); poll mode follows a change, explicit mode loads and
unloads, and every bad input (unknown scheme, malformed URL, missing credentials, missing bucket, unreachable
endpoint, a wrong key, a `../` key, an object over the bound) gives a clear error naming the URL, never a secret,
while the other repositories keep serving.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import onnx_models
from helpers import REPO, finish_server, needs, identity_config, start_server, tail, tritium_bin, wait_for, write_python_model

AZURITE = REPO / ".tools" / "emulators" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account and key (public, the same in every installation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEY_ID = "AKIDCLOUDTEST"
S3_SECRET = "s3-secret-never-logged-7f3a9c"
CLOUD_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
    "AZURITE_BLOB_STORAGE_URL", "TRITON_CLOUD_CREDENTIAL_PATH",
)


# ---- emulators -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
@needs("cloud")
def moto():
    """moto's S3 server in a thread of this process; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
@needs("cloud")
def gcs():
    """gcp-storage-emulator in a thread of this process (in memory); its URL."""
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    # The emulator has no accessor for a port it was given as 0: its HTTP server knows it.
    port = server._api._httpd.server_address[1]
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
@needs("cloud")
def azurite(tmp_path_factory):
    """Azurite's blob service (in memory) on an ephemeral port; its URL."""
    if not AZURITE.exists():
        pytest.fail(f"{AZURITE} not found: run scripts/install-emulators.sh")
    workdir = tmp_path_factory.mktemp("azurite")
    proc = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence", "--silent"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    url = None
    while url is None:
        line = lines.get(timeout=60)
        if line is None:
            pytest.fail("azurite exited before it listened:\n" + "".join(seen))
        seen.append(line)
        found = re.search(r"listens on (http://127\.0\.0\.1:\d+)", line)
        url = found.group(1) if found else None
    yield url
    # Azurite closes its in-memory store on SIGTERM but can wait on idle connections: in memory, SIGKILL loses nothing.
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


# ---- uploads ---------------------------------------------------------------------------------------------


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET, region_name="us-east-1"
    )


def s3_put(endpoint: str, bucket: str, files: dict[str, bytes]) -> None:
    client = s3_client(endpoint)
    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=bucket)
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def gcs_put(url: str, bucket: str, files: dict[str, bytes]) -> None:
    """Plain HTTP to the emulator's JSON API: create the bucket, upload each object."""
    create = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        urllib.request.urlopen(create, timeout=30).read()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise
    for key, body in files.items():
        name = urllib.parse.quote(key, safe="")
        upload = urllib.request.Request(
            f"{url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", data=body,
            headers={"Content-Type": "application/octet-stream"}, method="POST",
        )
        urllib.request.urlopen(upload, timeout=30).read()


def azure_request(url: str, method: str, path: str, query: dict[str, str], body: bytes = b"", headers=None) -> None:
    """One Blob service request signed with Shared Key (the account key), as the Azure SDKs sign."""
    headers = dict(headers or {})
    headers.update({"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"})
    length = str(len(body)) if body else ""
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
    resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}{path}" + "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
    to_sign = f"{method}\n\n\n{length}\n\n{headers.get('Content-Type', '')}\n\n\n\n\n\n\n{canonical_headers}{resource}"
    signature = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest())
    headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{signature.decode()}"
    full = f"{url}/{AZURITE_ACCOUNT}{urllib.parse.quote(path)}" + ("?" + urllib.parse.urlencode(query) if query else "")
    urllib.request.urlopen(urllib.request.Request(full, data=body or None, headers=headers, method=method), timeout=30).read()


def azure_put(url: str, container: str, files: dict[str, bytes]) -> None:
    try:
        azure_request(url, "PUT", f"/{container}", {"restype": "container"})
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise
    for key, body in files.items():
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        azure_request(url, "PUT", f"/{container}/{key}", {}, body, headers)


def identity_files(prefix: str, name: str, versions=(1,)) -> dict[str, bytes]:
    """An identity model (built-in backend): config.pbtxt and a file in each version folder (an object store
    has no empty folders)."""
    files = {f"{prefix}/{name}/config.pbtxt": identity_config(name, "TYPE_FP32").encode()}
    for version in versions:
        files[f"{prefix}/{name}/{version}/weights.txt"] = f"version {version}\n".encode()
    return files


def folder_files(prefix: str, folder: pathlib.Path) -> dict[str, bytes]:
    return {f"{prefix}/{folder.name}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- the server ------------------------------------------------------------------------------------------


@pytest.fixture
def cloud_env(monkeypatch, tmp_path):
    """No cloud variable leaks in from the machine (nor ~/.aws): each test sets its own."""
    for name in CLOUD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return monkeypatch


@pytest.fixture
def serve():
    started = []

    def start(*args: str):
        server = start_server(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        finish_server(server)


def check_identity(client: grpcclient.InferenceServerClient, name: str) -> None:
    assert client.is_model_ready(name)
    metadata = client.get_model_metadata(name)
    assert metadata.name == name and [i.name for i in metadata.inputs] == ["INPUT0"]
    data = np.arange(5, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [5], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(name, [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def index(client: grpcclient.InferenceServerClient) -> dict[str, list]:
    rows: dict[str, list] = {}
    for model in client.get_model_repository_index().models:
        rows.setdefault(model.name, []).append((model.version, model.state, model.reason))
    return rows


def logs(server) -> str:
    return server.stderr() + "\n".join(server.stdout_lines)


# ---- each store serves -----------------------------------------------------------------------------------


@pytest.mark.onnx
@pytest.mark.python_backend
def test_s3_repository_serves_beside_a_folder(moto, cloud_env, serve, tmp_path, model_repo):
    """s3://http://HOST:PORT/bucket/path (a custom endpoint) mixed with a local folder: an identity model, an
    ONNX model and a Python model from the bucket, a model from the folder, all listed and answering."""
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    onnx_models.row_sums(onnx_dir, "rows_s3")
    write_python_model(onnx_dir, "doubler_s3", """
        max_batch_size: 0
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ -1 ] } ]
    """, """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                replies = []
                for request in requests:
                    data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                    replies.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", data * 2)]))
                return replies
    """)
    files = identity_files("repo", "ident_s3") | folder_files("repo", onnx_dir / "rows_s3")
    files |= folder_files("repo", onnx_dir / "doubler_s3")
    s3_put(moto, "models-s3", files)
    (model_repo / "local_ident").mkdir()
    (model_repo / "local_ident" / "config.pbtxt").write_text(identity_config("local_ident", "TYPE_FP32"))
    (model_repo / "local_ident" / "1").mkdir()
    cloud_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    cloud_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    cache = tmp_path / "cache"
    server = serve("--model-repository", f"s3://{moto}/models-s3/repo", "--model-repository", str(model_repo),
                   "--cloud-cache-dir", str(cache), "--python-interpreter", sys.executable)
    client = grpcclient.InferenceServerClient(server.url)
    check_identity(client, "ident_s3")
    check_identity(client, "local_ident")
    assert client.is_model_ready("rows_s3"), tail(logs(server))
    assert client.get_model_metadata("rows_s3").platform == "onnxruntime_onnx"
    tensor = grpcclient.InferInput("IN", [3], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    np.testing.assert_array_equal(client.infer("doubler_s3", [tensor]).as_numpy("OUT"), [2, 4, 6])
    assert client.is_server_ready()
    assert {n: [r[1] for r in rows] for n, rows in index(client).items()} == {
        "doubler_s3": ["READY"], "ident_s3": ["READY"], "local_ident": ["READY"], "rows_s3": ["READY"]
    }
    # The copy is where --cloud-cache-dir says, private to the server's user.
    copied = list(cache.rglob("ident_s3/config.pbtxt"))
    assert len(copied) == 1 and (cache.stat().st_mode & 0o777) == 0o700
    assert S3_SECRET not in logs(server)


def test_gcs_repository_serves(gcs, cloud_env, tmp_path):
    """gs://bucket/path with the emulator named by STORAGE_EMULATOR_HOST (no credentials, as the SDKs)."""
    gcs_put(gcs, "models-gcs", identity_files("deep/repo", "ident_gcs"))
    cloud_env.setenv("STORAGE_EMULATOR_HOST", gcs)
    temp = tmp_path / "tmp"
    temp.mkdir()
    cloud_env.setenv("TMPDIR", str(temp))
    # Stopped here, not by the fixture: what it leaves at exit is checked.
    server = start_server("--model-repository", "gs://models-gcs/deep/repo")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        check_identity(client, "ident_gcs")
        assert list(index(client)) == ["ident_gcs"]
        # Without --cloud-cache-dir the copies go to a private temporary folder, removed at exit.
        (cache,) = temp.glob("tritium-cloud-*")
        assert (cache.stat().st_mode & 0o777) == 0o700 and list(cache.rglob("ident_gcs/config.pbtxt"))
    finally:
        status = server.stop()
        server.stderr_path.unlink(missing_ok=True)
    assert status == 0 and not cache.exists()


def test_azure_repository_serves(azurite, cloud_env, serve):
    """as://account/container/path with AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_KEY against Azurite."""
    azure_put(azurite, "models", identity_files("repo", "ident_az"))
    cloud_env.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    cloud_env.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    cloud_env.setenv("AZURITE_BLOB_STORAGE_URL", azurite)
    server = serve("--model-repository", f"as://{AZURITE_ACCOUNT}/models/repo")
    client = grpcclient.InferenceServerClient(server.url)
    check_identity(client, "ident_az")
    assert AZURITE_KEY not in logs(server)


def test_triton_credential_file(moto, cloud_env, serve, tmp_path):
    """TRITON_CLOUD_CREDENTIAL_PATH: the s3 entry whose key is the longest prefix of the URL is used."""
    s3_put(moto, "models-cred", identity_files("repo", "ident_cred"))
    creds = tmp_path / "cloud_credential.json"
    creds.write_text(json.dumps({"s3": {"": {"key_id": "", "secret_key": ""},
                                        f"s3://{moto}/models-cred": {"key_id": S3_KEY_ID, "secret_key": S3_SECRET,
                                                                     "region": "us-east-1"}}}))
    cloud_env.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(creds))
    server = serve("--model-repository", f"s3://{moto}/models-cred/repo")
    check_identity(grpcclient.InferenceServerClient(server.url), "ident_cred")


# ---- control modes ---------------------------------------------------------------------------------------


def test_poll_mode_follows_the_bucket(moto, cloud_env, serve):
    """Poll mode lists the bucket each poll: a new version folder is loaded, a new model appears, a removed
    model is unloaded."""
    s3_put(moto, "models-poll", identity_files("repo", "changing") | identity_files("repo", "leaving"))
    cloud_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    cloud_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    # Triton's s3://HOST:PORT/bucket/path form: the endpoint over HTTP.
    bare = moto.removeprefix("http://")
    server = serve("--model-repository", f"s3://{bare}/models-poll/repo", "--model-control-mode", "poll",
                   "--repository-poll-secs", "1")
    client = grpcclient.InferenceServerClient(server.url)
    assert client.is_model_ready("changing", "1") and not client.is_model_ready("changing", "2")
    s3_put(moto, "models-poll", {"repo/changing/2/weights.txt": b"version 2\n"} | identity_files("repo", "arriving"))
    client_s3 = s3_client(moto)
    for key in identity_files("repo", "leaving"):
        client_s3.delete_object(Bucket="models-poll", Key=key)
    assert wait_for(lambda: client.is_model_ready("changing", "2"), timeout=60), tail(logs(server))
    assert wait_for(lambda: client.is_model_ready("arriving"), timeout=60)
    assert wait_for(lambda: not client.is_model_ready("leaving"), timeout=60)
    check_identity(client, "arriving")
    # Triton's default version policy serves the latest version only.
    assert client.get_model_metadata("changing").versions == ["2"] and not client.is_model_ready("changing", "1")


def test_explicit_mode_loads_and_unloads(moto, cloud_env, serve):
    """Explicit mode lists the bucket's models without loading them; a load copies and loads one, an unload
    unloads it; a load of a name the bucket lacks fails as Triton's."""
    s3_put(moto, "models-explicit", identity_files("repo", "first") | identity_files("repo", "second"))
    cloud_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    cloud_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    # A plain s3://bucket/path with the endpoint from AWS_ENDPOINT_URL, as the AWS SDKs read it.
    cloud_env.setenv("AWS_ENDPOINT_URL", moto)
    server = serve("--model-repository", "s3://models-explicit/repo", "--model-control-mode", "explicit",
                   "--load-model", "first")
    client = grpcclient.InferenceServerClient(server.url)
    check_identity(client, "first")
    assert not client.is_model_ready("second")
    assert index(client)["second"] == [("", "", "")]
    client.load_model("second")
    check_identity(client, "second")
    client.unload_model("second")
    assert wait_for(lambda: not client.is_model_ready("second"))
    with pytest.raises(Exception, match="failed to poll from model repository"):
        client.load_model("absent")


def test_on_demand_mode_loads_from_the_bucket_on_first_use(moto, cloud_env, serve):
    """On-demand loading over a bucket: every model listed, none loaded until its first request, which copies and
    loads it; past --max-loaded-models the least recently used goes, and comes back from the bucket when asked."""
    s3_put(moto, "models-on-demand", identity_files("repo", "first") | identity_files("repo", "second"))
    cloud_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    cloud_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    cloud_env.setenv("AWS_ENDPOINT_URL", moto)
    server = serve("--model-repository", "s3://models-on-demand/repo", "--model-control-mode", "on-demand",
                   "--max-loaded-models", "1")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    assert set(index(client)) == {"first", "second"}
    assert not any(m.get("state") == "READY" for m in client.get_model_repository_index(as_json=True)["models"])
    check_identity(client, "first")
    check_identity(client, "second")
    ready = lambda: {m["name"] for m in client.get_model_repository_index(as_json=True)["models"] if m.get("state") == "READY"}  # noqa: E731
    assert wait_for(lambda: ready() == {"second"}), ready()
    check_identity(client, "first")
    assert wait_for(lambda: ready() == {"first"}), ready()


# ---- bad inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location, words",
    [
        ("ftp://host/models", "unknown scheme 'ftp'"),
        ("s3://http://127.0.0.1:notaport/bucket/models", "not a port number"),
        ("s3://bucket/../models", "'..'"),
        ("as://account", "container: missing"),
        (f"s3://key:{S3_SECRET}@bucket/models", "may not hold"),
    ],
)
def test_malformed_locations_are_refused_at_start(location, words, cloud_env):
    """A location that is not one of Triton's forms stops the server at start with a clear error (never
    echoing what could be a password)."""
    done = subprocess.run([str(tritium_bin()), "serve", "--model-repository", location], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert words in done.stderr and "--model-repository" in done.stderr, done.stderr
    assert S3_SECRET not in done.stderr + done.stdout


def test_bad_repositories_leave_the_rest_serving(moto, azurite, cloud_env, serve, tmp_path, model_repo):
    """One server, one good bucket beside: a missing bucket, an unreachable endpoint, a wrong Azure key, a model
    with a `../` key, a model over --cloud-max-model-bytes, a model over --cloud-max-model-objects. Each is a
    clear error naming its URL (log, index), no secret is logged, nothing is written outside the cache, and the
    good models answer; the server says it is not ready."""
    bucket = "models-bad"
    escape_name = f"escaped-{os.getpid()}.txt"
    files = identity_files("repo", "fine")
    files |= identity_files("repo", "evil") | {f"repo/evil/1/../../../../{escape_name}": b"escaped"}
    files |= identity_files("repo", "big") | {"repo/big/1/blob.bin": b"x" * 8192}
    files |= identity_files("repo", "many") | {f"repo/many/1/part{i}.txt": b"p" for i in range(12)}
    s3_put(moto, bucket, files)
    (model_repo / "local_ok").mkdir()
    (model_repo / "local_ok" / "config.pbtxt").write_text(identity_config("local_ok", "TYPE_FP32"))
    (model_repo / "local_ok" / "1").mkdir()
    wrong_key = base64.b64encode(b"wrong-azure-key-never-logged-123").decode()
    cloud_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    cloud_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    cloud_env.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    cloud_env.setenv("AZURE_STORAGE_KEY", wrong_key)
    cloud_env.setenv("AZURITE_BLOB_STORAGE_URL", azurite)
    azure_put(azurite, "models-bad", identity_files("repo", "az_unreached"))
    closed = bound_then_closed_port()
    cache = tmp_path / "cache"
    missing = f"s3://{moto}/no-such-bucket/repo"
    unreachable = f"s3://http://127.0.0.1:{closed}/models/repo"
    azure = f"as://{AZURITE_ACCOUNT}/models-bad/repo"
    server = serve(
        "--model-repository", f"s3://{moto}/{bucket}/repo", "--model-repository", str(model_repo),
        "--model-repository", missing, "--model-repository", unreachable, "--model-repository", azure,
        "--cloud-cache-dir", str(cache), "--cloud-max-model-bytes", "4096", "--cloud-max-model-objects", "8",
    )
    client = grpcclient.InferenceServerClient(server.url)
    check_identity(client, "fine")
    check_identity(client, "local_ok")
    rows = index(client)
    assert not client.is_model_ready("az_unreached") and "az_unreached" not in rows
    evil = rows["evil"][0]
    assert evil[1] == "UNAVAILABLE" and f"s3://{moto}/{bucket}/repo" in evil[2] and ".." in evil[2], evil
    big = rows["big"][0]
    assert big[1] == "UNAVAILABLE" and "blob.bin" in big[2] and "8192 bytes" in big[2] and "--cloud-max-model-bytes" in big[2]
    many = rows["many"][0]
    assert many[1] == "UNAVAILABLE" and "--cloud-max-model-objects (8)" in many[2], many
    assert not client.is_server_ready()
    text = logs(server)
    assert f"{missing}: listing the repository: the bucket or container does not exist" in text, tail(text)
    assert f"{unreachable}: listing the repository: the endpoint is unreachable" in text, tail(text)
    assert f"{azure}: listing the repository:" in text and "check the credentials" in text.split(azure, 1)[1], tail(text)
    for secret in (S3_SECRET, wrong_key, AZURITE_KEY):
        assert secret not in text
    assert not list(tmp_path.rglob(escape_name)) and not list(REPO.glob(escape_name))
    assert not list(cache.rglob("blob.bin"))


def test_missing_credentials_are_named(moto, cloud_env, serve, model_repo):
    """No AWS variable, no ~/.aws, no credential file: the repository fails to list saying which credentials
    it needs; a folder beside it serves."""
    s3_put(moto, "models-nocred", identity_files("repo", "unreached"))
    (model_repo / "local_ok").mkdir()
    (model_repo / "local_ok" / "config.pbtxt").write_text(identity_config("local_ok", "TYPE_FP32"))
    (model_repo / "local_ok" / "1").mkdir()
    url = f"s3://{moto}/models-nocred/repo"
    server = serve("--model-repository", url, "--model-repository", str(model_repo))
    client = grpcclient.InferenceServerClient(server.url)
    check_identity(client, "local_ok")
    assert "unreached" not in index(client)
    assert f"{url}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in logs(server)
    assert not client.is_server_ready()


def bound_then_closed_port() -> int:
    """A port nothing listens on: bound by the kernel's choice, then closed."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
