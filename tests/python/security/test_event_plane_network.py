"""The ZeroMQ event plane off loopback (issue 60, item 4): ZeroMQ here has no authentication or encryption (the
`zeromq` crate speaks only the NULL mechanism, and Dynamo 1.6.1's ZeroMQ planes use no CURVE either), so a socket
that would bind off loopback stops the process at start naming `--event-plane-trusted-network`; the subscribing
side's refusal of off-loopback publishers is a unit test (`cluster/src/events/zmq.rs`)."""

from __future__ import annotations

import subprocess

import pytest

from helpers import start_failure, tritium_bin


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_a_frontend_binding_zeromq_off_loopback_is_refused_naming_the_flag(tmp_path, host):
    failure = start_failure("--discovery-backend", "file", "--event-plane", "zmq", "--event-plane-host", host,
                            env={"DYN_FILE_KV": str(tmp_path)})  # fmt: skip
    assert "--event-plane-trusted-network" in failure and f"would bind on {host}" in failure, failure


def test_the_variable_form_is_refused_alike(tmp_path):
    failure = start_failure("--discovery-backend", "file", env={"DYN_FILE_KV": str(tmp_path), "DYN_EVENT_PLANE_HOST": "0.0.0.0"})
    assert "DYN_EVENT_PLANE_HOST" in failure and "--event-plane-trusted-network" in failure, failure


def test_a_dynamo_protocol_worker_publishing_off_loopback_is_refused_naming_the_flag(tmp_path):
    done = subprocess.run(
        [str(tritium_bin()), "worker", "--worker-protocol", "dynamo", "--discovery-backend", "file", "--engine", "mock"],
        env={"DYN_FILE_KV": str(tmp_path), "DYN_TCP_RPC_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0, done.stderr
    assert "DYN_TCP_RPC_HOST" in done.stderr and "--event-plane-trusted-network" in done.stderr, done.stderr
