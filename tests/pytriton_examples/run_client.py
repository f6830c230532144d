"""Runs one example's client.py against a server on other ports than PyTriton's defaults: the
examples connect to "localhost" (HTTP on 8000), so this points the client module's default ports
at the server's before running the script unchanged.

    python run_client.py CLIENT_MODULE HTTP_PORT GRPC_PORT path/to/client.py

CLIENT_MODULE is the module whose DEFAULT_HTTP_PORT/DEFAULT_GRPC_PORT the URL parser reads:
``tritium.pytriton.client`` here, ``pytriton.client.utils`` for PyTriton itself."""

import importlib
import runpy
import sys

module, http_port, grpc_port, script = sys.argv[1:5]
client = importlib.import_module(module)
client.DEFAULT_HTTP_PORT = int(http_port)
client.DEFAULT_GRPC_PORT = int(grpc_port)
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
