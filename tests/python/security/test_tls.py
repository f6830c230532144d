"""TLS on the gRPC and HTTP ports with certificates made here by the `openssl` CLI (a test CA, a server
certificate for 127.0.0.1 and localhost, a client certificate): tritonclient.grpc with `ssl=True`, mutual TLS
(a client without a certificate is refused), grpcurl with `-cacert`, tritonclient.http with `ssl=True`, HTTPS
from Dynamo's DYN_TLS_CERT_PATH / DYN_TLS_KEY_PATH, and bad certificate files refused at start-up.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import REPO, tritium_bin

GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the `openssl` command is needed to make the test certificates (Debian package openssl)")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    """ca.pem; server.pem/server.key (127.0.0.1, localhost); client.pem/client.key; other-ca.pem (untrusted)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.pem"), "-days", "2", "-subj", f"/CN={ca}")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"), "-subj", f"/CN={who}")
        _openssl("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-out", str(d / f"{who}.pem"), "-days", "2", "-extfile", str(d / f"{who}.ext"))
    return d


def _grpc_tls(certs: pathlib.Path, mutual: bool = False) -> list[str]:
    args = ["--grpc-use-ssl", "--grpc-server-cert", str(certs / "server.pem"), "--grpc-server-key", str(certs / "server.key")]
    if mutual:
        args += ["--grpc-use-ssl-mutual", "--grpc-root-cert", str(certs / "ca.pem")]
    return args


def _identity_grpc(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(4, dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("identity", [inp]).as_numpy("OUTPUT0"), data)


def _identity_http(client: httpclient.InferenceServerClient) -> None:
    data = np.arange(4, dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("identity", [inp]).as_numpy("OUTPUT0"), data)


def test_grpc_over_tls(start_tritium, certs):
    server = start_tritium(*_grpc_tls(certs))
    client = grpcclient.InferenceServerClient(f"localhost:{server.port}", ssl=True, root_certificates=str(certs / "ca.pem"))
    assert client.is_server_ready()
    _identity_grpc(client)
    client.close()
    # A plaintext client cannot talk to the TLS port, and the server stays up for the next one.
    plain = grpcclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException):
        plain.is_server_ready(client_timeout=5)
    plain.close()
    # A client that trusts another CA refuses the server's certificate.
    other = grpcclient.InferenceServerClient(f"localhost:{server.port}", ssl=True, root_certificates=str(certs / "other-ca.pem"))
    with pytest.raises(InferenceServerException):
        other.is_server_ready(client_timeout=5)
    other.close()
    again = grpcclient.InferenceServerClient(f"localhost:{server.port}", ssl=True, root_certificates=str(certs / "ca.pem"))
    assert again.is_server_live()
    again.close()


def test_grpc_mutual_tls(start_tritium, certs):
    server = start_tritium(*_grpc_tls(certs, mutual=True))
    address = f"localhost:{server.port}"
    with_cert = grpcclient.InferenceServerClient(
        address, ssl=True, root_certificates=str(certs / "ca.pem"),
        private_key=str(certs / "client.key"), certificate_chain=str(certs / "client.pem"),
    )
    assert with_cert.is_server_ready()
    _identity_grpc(with_cert)
    with_cert.close()
    without_cert = grpcclient.InferenceServerClient(address, ssl=True, root_certificates=str(certs / "ca.pem"))
    with pytest.raises(InferenceServerException):
        without_cert.is_server_ready(client_timeout=5)
    without_cert.close()
    # A client certificate from another CA is refused too.
    wrong = grpcclient.InferenceServerClient(
        address, ssl=True, root_certificates=str(certs / "ca.pem"),
        private_key=str(certs / "other-ca.key"), certificate_chain=str(certs / "other-ca.pem"),
    )
    with pytest.raises(InferenceServerException):
        wrong.is_server_ready(client_timeout=5)
    wrong.close()


def test_grpcurl_with_cacert(start_tritium, certs):
    if not GRPCURL.exists():
        pytest.fail(f"{GRPCURL} missing: run scripts/setup-python.sh")
    server = start_tritium(*_grpc_tls(certs))
    out = subprocess.run(
        [str(GRPCURL), "-cacert", str(certs / "ca.pem"), "-d", "{}", f"localhost:{server.port}",
         "inference.GRPCInferenceService/ServerReady"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ready": True}
    refused = subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", "{}", f"localhost:{server.port}", "inference.GRPCInferenceService/ServerReady"],
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0


def test_https(start_tritium, certs):
    server = start_tritium(
        "--http-use-ssl", "--http-server-cert", str(certs / "server.pem"), "--http-server-key", str(certs / "server.key")
    )
    client = httpclient.InferenceServerClient(
        f"localhost:{server.http_port}", ssl=True, ssl_options={"ca_certs": str(certs / "ca.pem")}
    )
    assert client.is_server_ready()
    _identity_http(client)
    client.close()
    # gRPC stays plaintext when only the HTTP port has TLS.
    plain_grpc = grpcclient.InferenceServerClient(server.url)
    assert plain_grpc.is_server_ready()
    plain_grpc.close()


def test_https_mutual(start_tritium, certs):
    server = start_tritium(
        "--http-use-ssl-mutual", "--http-server-cert", str(certs / "server.pem"), "--http-server-key", str(certs / "server.key"),
        "--http-root-cert", str(certs / "ca.pem"),
    )
    address = f"localhost:{server.http_port}"
    with_cert = httpclient.InferenceServerClient(
        address, ssl=True,
        ssl_options={"ca_certs": str(certs / "ca.pem"), "certfile": str(certs / "client.pem"), "keyfile": str(certs / "client.key")},
    )
    assert with_cert.is_server_ready()
    with_cert.close()
    without_cert = httpclient.InferenceServerClient(address, ssl=True, ssl_options={"ca_certs": str(certs / "ca.pem")})
    with pytest.raises(Exception):
        without_cert.is_server_ready()
    without_cert.close()


def test_https_from_dynamo_variables(start_tritium, certs, monkeypatch):
    monkeypatch.setenv("DYN_TLS_CERT_PATH", str(certs / "server.pem"))
    monkeypatch.setenv("DYN_TLS_KEY_PATH", str(certs / "server.key"))
    server = start_tritium()
    client = httpclient.InferenceServerClient(
        f"localhost:{server.http_port}", ssl=True, ssl_options={"ca_certs": str(certs / "ca.pem")}
    )
    assert client.is_server_live()
    client.close()


@pytest.mark.parametrize("args, words", [
    (["--grpc-use-ssl"], "--grpc-use-ssl needs --grpc-server-cert"),
    (["--grpc-use-ssl-mutual", "--grpc-server-cert", "X", "--grpc-server-key", "Y"], "--grpc-use-ssl-mutual needs --grpc-root-cert"),
    (["--grpc-use-ssl", "--grpc-server-cert", "/nonexistent/cert.pem", "--grpc-server-key", "/nonexistent/key.pem"],
     "cannot read the server certificate /nonexistent/cert.pem"),
], ids=["no-cert", "mutual-no-roots", "missing-files"])
def test_bad_tls_settings_stop_the_start(args, words):
    proc = subprocess.run(
        [str(tritium_bin()), "serve", "--grpc-port", "0", "--allow-http=false", "--allow-metrics=false", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_"))},
    )
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr[-2000:]
