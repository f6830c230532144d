# shellcheck shell=bash
# Source to find the Triton installed by bench/lib/install-triton.sh. Exports, without changing the caller's
# own PATH or LD_LIBRARY_PATH:
#   TRITONSERVER            the tritonserver binary (2.51.0, from nvidia-pytriton 0.7.0)
#   TRITON_BACKENDS         backend directory: the python backend with the Python 3.11 stub
#   TRITON_LD_LIBRARY_PATH  nvidia_pytriton.libs + the libpython of the venv's base interpreter (pyenv's 3.11.7
#                           here; Debian's 3.11.2 breaks model load)
#   TRITON_PATH             the venv's bin/ first (the python backend's embedded interpreter ignores PYTHONPATH
#                           and finds numpy through the venv's python on PATH)
# Run Triton as: env LD_LIBRARY_PATH="$TRITON_LD_LIBRARY_PATH" PATH="$TRITON_PATH" "$TRITONSERVER" ...
_tr_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_tr_venv="$_tr_repo/.tools/triton-venv"
_tr_site="$("$_tr_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
_tr_libdir="$("$_tr_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export TRITONSERVER="$_tr_site/pytriton/tritonserver/bin/tritonserver"
export TRITON_BACKENDS="$_tr_repo/.tools/triton-backends"
export TRITON_LD_LIBRARY_PATH="$_tr_site/nvidia_pytriton.libs:$_tr_libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TRITON_PATH="$_tr_venv/bin:$PATH"
unset _tr_repo _tr_venv _tr_site _tr_libdir
