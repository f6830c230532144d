"""Asks the documented triton_python_backend_utils API questions and answers with what it got, as JSON (TEXT).
MODE picks the group of questions. Every question is answered as {"ok": value} or {"raised": type, "message": text};
values are made plain (numpy types by their dtype string, bytes as base64) so that two servers compare exactly.
auto_complete_config names get_model_dir()'s answer in an output it adds (the ModelConfig RPC shows it)."""

import asyncio
import base64
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# The names the python backend's documentation and utils module give pb_utils (attributes and functions).
MODULE_NAMES = [
    "Tensor", "InferenceRequest", "InferenceResponse", "TritonError", "TritonModelException", "Logger",
    "PreferredMemory", "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_GPU", "MetricFamily", "load_model",
    "unload_model", "is_model_ready", "get_model_dir", "TRITON_STRING_TO_NUMPY", "serialize_byte_tensor",
    "deserialize_bytes_tensor", "get_input_tensor_by_name", "get_output_tensor_by_name", "get_input_config_by_name",
    "get_output_config_by_name", "using_decoupled_model_transaction_policy", "triton_to_numpy_type",
    "numpy_to_triton_type", "triton_string_to_numpy", "ModelConfig", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END", "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITONSERVER_REQUEST_RELEASE_ALL", "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
]
CLASS_NAMES = {
    "Tensor": ["name", "as_numpy", "triton_dtype", "to_dlpack", "is_cpu", "shape", "from_dlpack", "__dlpack__",
               "__dlpack_device__"],
    "InferenceRequest": ["inputs", "request_id", "correlation_id", "flags", "set_flags", "timeout", "parameters",
                         "trace", "exec", "async_exec", "requested_output_names", "get_response_sender",
                         "is_cancelled", "set_release_flags"],
    "InferenceResponse": ["output_tensors", "has_error", "error"],
    "TritonError": ["code", "message", "UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE",
                    "UNSUPPORTED", "ALREADY_EXISTS", "CANCELLED"],
    "Logger": ["log", "log_info", "log_warn", "log_error", "log_verbose", "INFO", "WARNING", "ERROR", "VERBOSE",
               "LogLevel"],
    "MetricFamily": ["COUNTER", "GAUGE", "HISTOGRAM", "Metric"],
    "ModelConfig": ["as_dict", "set_max_batch_size", "set_dynamic_batching", "add_input", "add_output",
                    "set_model_transaction_policy"],
}  # fmt: skip
# By a name of our own: numpy's own names of its types change between versions.
NUMPY_TYPES = {"np.bool_": np.bool_, "np.uint8": np.uint8, "np.uint16": np.uint16, "np.uint32": np.uint32,
               "np.uint64": np.uint64, "np.int8": np.int8, "np.int16": np.int16, "np.int32": np.int32,
               "np.int64": np.int64, "np.float16": np.float16, "np.float32": np.float32, "np.float64": np.float64,
               "np.object_": np.object_, "np.bytes_": np.bytes_, "np.str_": np.str_, "bool": bool, "int": int,
               "float": float}  # fmt: skip
CONFIG_TYPES = ["TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
                "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
                "TYPE_INVALID"]  # fmt: skip
NUMERIC = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float16,
           np.float32, np.float64]  # fmt: skip


def plain(value):
    """A JSON-able form of what the API returned."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, np.ndarray):
        items = value.tolist() if value.dtype.kind not in "OSU" else [plain(v) for v in value.reshape(-1)]
        return {"array": value.dtype.str, "shape": list(value.shape), "items": items}
    if isinstance(value, np.dtype):
        return {"dtype": value.str}
    if isinstance(value, type):
        if issubclass(value, np.generic):
            return {"type": np.dtype(value).str}
        return {"type": value.__name__}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"set": sorted(plain(v) for v in value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return plain(value.item())
    try:
        return {"int": int(value)}  # pybind11 enums
    except (TypeError, ValueError):
        return {"object": type(value).__name__}


def ask(question):
    try:
        return {"ok": plain(question())}
    except BaseException as e:  # noqa: BLE001 - the answer is the exception
        return {"raised": type(e).__name__, "message": str(e)}


def raised_type(question):
    """As ask, keeping only an exception's type (where the message is the binding's own signature dump)."""
    answer = ask(question)
    answer.pop("message", None)
    return answer


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        # Triton keeps only some fields of the returned config (not parameters): the answer travels in an output's name.
        try:
            where = "_".join(pb_utils.get_model_dir().rstrip("/").split("/")[-2:])
        except Exception as e:  # noqa: BLE001
            where = type(e).__name__
        auto_complete_model_config.add_output({"name": "DIR_" + where, "data_type": "TYPE_INT8", "dims": [1]})
        return auto_complete_model_config

    def initialize(self, args):
        self.args = args
        self.model_dir_at_initialize = ask(pb_utils.get_model_dir)

    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            group, _, only = mode.partition(":")
            answer = getattr(self, "probe_" + group)(request)
            if callable(answer):
                answer = answer(only)
            text = np.array([json.dumps(answer, sort_keys=True).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out

    def probe_names(self, request):
        names = {name: hasattr(pb_utils, name) for name in MODULE_NAMES}
        members = {}
        for cls, attrs in CLASS_NAMES.items():
            holder = getattr(pb_utils, cls, None)
            members[cls] = {a: holder is not None and hasattr(holder, a) for a in attrs}
        return {"module": names, "classes": members}

    def probe_model_dir(self, request):
        return {
            "initialize": self.model_dir_at_initialize,
            "execute": ask(pb_utils.get_model_dir),
            "is_model_folder_version": ask(
                lambda: pb_utils.get_model_dir() == os.path.join(self.args["model_repository"], self.args["model_version"])
            ),
            "args_parameters": json.loads(self.args["model_config"]).get("parameters"),
        }

    def probe_types(self, request):
        return {
            "triton_to_numpy_type": {str(i): ask(lambda i=i: pb_utils.triton_to_numpy_type(i)) for i in range(16)},
            "numpy_to_triton_type": {
                name: ask(lambda t=t: pb_utils.numpy_to_triton_type(t)) for name, t in NUMPY_TYPES.items()
            },
            "numpy_to_triton_type_of_dtype": {
                np.dtype(t).str: ask(lambda t=t: pb_utils.numpy_to_triton_type(np.dtype(t))) for t in NUMERIC
            },
            "triton_string_to_numpy": {n: ask(lambda n=n: pb_utils.triton_string_to_numpy(n)) for n in CONFIG_TYPES},
            "TRITON_STRING_TO_NUMPY": ask(lambda: pb_utils.TRITON_STRING_TO_NUMPY),
        }  # fmt: skip

    def probe_bytes(self, request):
        arrays = {
            "object_bytes": np.array([b"a", b"bc", b""], dtype=np.object_),
            "object_str": np.array(["x", "\u00e9t\u00e9"], dtype=np.object_),
            "object_mixed": np.array([b"raw", "text", 7, 1.5], dtype=np.object_),
            "bytes_": np.array([b"ab", b"c\x00"], dtype=np.bytes_),
            "object_2d": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=np.object_),
            "object_fortran": np.asfortranarray(np.array([[b"a", b"b"], [b"c", b"d"]], dtype=np.object_)),
            "empty": np.array([], dtype=np.object_),
            "str_": np.array(["a", "b"], dtype=np.str_),
            "int32": np.array([1, 2], dtype=np.int32),
        }
        serialized = {name: ask(lambda a=a: pb_utils.serialize_byte_tensor(a)) for name, a in arrays.items()}
        encoded = b"\x01\x00\x00\x00a\x00\x00\x00\x00\x03\x00\x00\x00xyz"
        return {
            "serialize": serialized,
            "serialize_type": {name: ask(lambda a=a: type(pb_utils.serialize_byte_tensor(a)).__name__)
                               for name, a in arrays.items()},  # fmt: skip
            "deserialize_bytes": ask(lambda: pb_utils.deserialize_bytes_tensor(encoded)),
            "deserialize_empty": ask(lambda: pb_utils.deserialize_bytes_tensor(b"")),
            "deserialize_uint8_array": ask(lambda: pb_utils.deserialize_bytes_tensor(np.frombuffer(encoded, np.uint8))),
            "deserialize_truncated": raised_type(lambda: pb_utils.deserialize_bytes_tensor(b"\x05\x00\x00\x00ab")),
            "round_trip": ask(lambda: pb_utils.deserialize_bytes_tensor(
                pb_utils.serialize_byte_tensor(np.array([b"p", b"qr"], dtype=np.object_)))),
        }  # fmt: skip

    def probe_tensor(self, request):
        made = {}
        for t in NUMERIC + [np.object_]:
            data = np.array([[1, 0, 1], [0, 1, 1]], dtype=t) if t is not np.object_ else np.array([[b"a"], [b"b"]], dtype=np.object_)
            key = np.dtype(t).str
            tensor = pb_utils.Tensor("T", data)
            made[key] = {
                "name": ask(tensor.name),
                "shape": ask(tensor.shape),
                "as_numpy": ask(tensor.as_numpy),
                "is_cpu": ask(tensor.is_cpu),
                "dlpack_device": ask(tensor.__dlpack_device__) if t is not np.object_ else None,
            }
        mode = pb_utils.get_input_tensor_by_name(request, "MODE")
        return {
            "made": made,
            "input": {"name": mode.name(), "shape": ask(mode.shape), "is_cpu": ask(mode.is_cpu),
                      "as_numpy": ask(mode.as_numpy)},  # fmt: skip
            "scalar": ask(lambda: pb_utils.Tensor("S", np.array(3.5, dtype=np.float32)).shape()),
            "scalar_value": ask(lambda: pb_utils.Tensor("S", np.array(3.5, dtype=np.float32)).as_numpy()),
            "from_list": raised_type(lambda: pb_utils.Tensor("L", [1, 2, 3]).as_numpy()),
            "str_array": ask(lambda: pb_utils.Tensor("U", np.array(["a"], dtype=np.str_)).shape()),
            "bytes_array_values": ask(lambda: pb_utils.Tensor("B", np.array([b"ab", b"c"], dtype=np.bytes_)).as_numpy()),
            "non_contiguous": ask(lambda: pb_utils.Tensor("N", np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]).as_numpy()),
            "fortran": ask(lambda: pb_utils.Tensor("F", np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))).as_numpy()),
            "empty_shapes": {str(s): ask(lambda s=s: pb_utils.Tensor("E", np.zeros(s, dtype=np.float32)).shape())
                             for s in [(0,), (2, 0), (0, 3)]},  # fmt: skip
            "empty_object": ask(lambda: pb_utils.Tensor("E", np.array([], dtype=np.object_)).as_numpy()),
            "name_int": raised_type(lambda: pb_utils.Tensor(5, np.zeros(1, np.float32)).name()),
        }  # fmt: skip

    def probe_dlpack(self, request):
        """Lazy: the questions run when asked (one by name with MODE dlpack:<key>), as some end a stub."""
        mode = pb_utils.get_input_tensor_by_name(request, "MODE")
        questions = {}
        for t in NUMERIC:
            data = np.arange(6).reshape(2, 3).astype(t)
            key = np.dtype(t).str
            questions[key + "/round_trip"] = lambda d=data: ask(
                lambda: pb_utils.Tensor.from_dlpack("R", pb_utils.Tensor("T", d).to_dlpack()).as_numpy())
        questions.update({
            "capsule_type": lambda: ask(lambda: type(pb_utils.Tensor("C", np.ones(2, np.float32)).to_dlpack()).__name__),
            "of_tensor_protocol": lambda: ask(lambda: pb_utils.Tensor.from_dlpack(
                "Q", pb_utils.Tensor("T", np.arange(4, dtype=np.int32))).as_numpy()),
            "numpy_of_tensor": lambda: ask(lambda: np.from_dlpack(pb_utils.Tensor("T", np.arange(3, dtype=np.int64)))),
            "non_contiguous": lambda: ask(lambda: pb_utils.Tensor.from_dlpack(
                "N", np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]).shape()),
            "fortran": lambda: ask(lambda: pb_utils.Tensor.from_dlpack(
                "F", np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))).shape()),
            "bytes_to_dlpack": lambda: raised_type(lambda: mode.to_dlpack()),
            "bytes_made_to_dlpack": lambda: raised_type(
                lambda: pb_utils.Tensor("B", np.array([b"x"], dtype=np.object_)).to_dlpack()),
            "empty": lambda: ask(lambda: pb_utils.Tensor.from_dlpack(
                "E", pb_utils.Tensor("E", np.zeros((2, 0), np.float32)).to_dlpack()).shape()),
            "scalar": lambda: ask(lambda: pb_utils.Tensor.from_dlpack(
                "S", pb_utils.Tensor("S", np.array(2.5, dtype=np.float64)).to_dlpack()).as_numpy()),
            "not_dlpack": lambda: raised_type(lambda: pb_utils.Tensor.from_dlpack("X", [1, 2])),
        })  # fmt: skip

        def answer(only):
            return {key: q() for key, q in questions.items() if not only or key == only or key.startswith(only + "/")}

        return answer

    def probe_triton_dtype(self, request):
        mode = pb_utils.get_input_tensor_by_name(request, "MODE")
        return {
            "made": {np.dtype(t).str: ask(pb_utils.Tensor("T", np.zeros(1, t)).triton_dtype) for t in NUMERIC},
            "input": ask(mode.triton_dtype),
        }

    def probe_errors(self, request):
        codes = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
                 "CANCELLED"]  # fmt: skip
        error = pb_utils.TritonError("plain")
        coded = pb_utils.TritonError("coded", pb_utils.TritonError.NOT_FOUND)
        exception = pb_utils.TritonModelException("model exception")
        return {
            "codes": {c: ask(lambda c=c: getattr(pb_utils.TritonError, c)) for c in codes},
            "default": [ask(error.message), ask(error.code), ask(lambda: error.code() == pb_utils.TritonError.INTERNAL)],
            "coded": [ask(coded.message), ask(lambda: coded.code() == pb_utils.TritonError.NOT_FOUND)],
            "keyword": ask(lambda: pb_utils.TritonError(message="kw", code=pb_utils.TritonError.UNAVAILABLE).message()),
            "none_message": raised_type(lambda: pb_utils.TritonError(None)),
            "exception": [str(exception), exception.args[0] if exception.args else None,
                          isinstance(exception, Exception), type(exception).__name__],
            "exception_raised": ask(lambda: (_ for _ in ()).throw(pb_utils.TritonModelException("thrown"))),
        }  # fmt: skip

    def probe_request_api(self, request):
        made = pb_utils.InferenceRequest(model_name="identity_fp32", requested_output_names=["OUTPUT0"],
                                         inputs=[pb_utils.Tensor("INPUT0", np.ones(2, np.float32))])  # fmt: skip
        answers = {
            "defaults": {
                "request_id": ask(made.request_id), "correlation_id": ask(made.correlation_id),
                "flags": ask(made.flags), "timeout": ask(made.timeout), "parameters": ask(made.parameters),
                "requested_output_names": ask(made.requested_output_names),
                "inputs": ask(lambda: [t.name() for t in made.inputs()]),
                "trace_context": ask(lambda: made.trace().get_context()),
                # is_cancelled() of a request the model made aborts tritonserver 2.51 ("Cannot determine request
                # cancellation"): not asked.
            },
            "set_flags": ask(lambda: (made.set_flags(3), made.flags())[1]),
            "parameters": ask(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[],
                parameters={"s": "x", "i": 7, "b": True}).parameters()),
            "parameters_float": ask(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[], parameters={"f": 1.5}).parameters()),
            "parameters_key": ask(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[], parameters={1: "x"}).parameters()),
            "parameters_json_string": raised_type(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[], parameters='{"a": 1}').parameters()),
            "correlation_str": ask(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[], correlation_id="seq-9").correlation_id()),
            "correlation_int": ask(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[], correlation_id=12).correlation_id()),
            "correlation_float": ask(lambda: pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=[], correlation_id=1.5).correlation_id()),
            "everything": ask(lambda: (lambda r: [r.request_id(), r.correlation_id(), r.flags(), r.timeout(),
                                                  sorted(r.requested_output_names())])(pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=["B", "A", "B"], request_id="rid", correlation_id=4,
                model_version=1, flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, timeout=5,
                preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)))),
            "requested_type": ask(lambda: type(pb_utils.InferenceRequest(
                model_name="m", inputs=[], requested_output_names=["B", "A"]).requested_output_names()).__name__),
            "no_model_name": raised_type(lambda: pb_utils.InferenceRequest(inputs=[], requested_output_names=[])),
            "preferred_memory": ask(lambda: type(pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU)).__name__),
            "memory_kinds": ask(lambda: [int(pb_utils.TRITONSERVER_MEMORY_GPU), int(pb_utils.TRITONSERVER_MEMORY_CPU)]),
            "flag_constants": [pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
                               pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL, pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL,
                               pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE],
        }  # fmt: skip
        answers["incoming"] = {
            "is_cancelled": ask(request.is_cancelled),
            "trace_context": ask(lambda: request.trace().get_context()),
            "requested_type": ask(lambda: type(request.requested_output_names()).__name__),
            "inputs_type": ask(lambda: type(request.inputs()).__name__),
            "set_release_flags_all": ask(lambda: request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL)),
        }
        answers["exec_with_preferred_memory"] = ask(lambda: (lambda r: [r.has_error(), r.output_tensors()[0].as_numpy()])(
            pb_utils.InferenceRequest(model_name="identity_fp32", requested_output_names=["OUTPUT0"],
                                      inputs=[pb_utils.Tensor("INPUT0", np.array([0.5], np.float32))],
                                      preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)).exec()))
        return answers  # fmt: skip

    def probe_bls_request_info(self, request):
        """What a BLS child (request_info) sees of a request made with every argument."""

        def child_view(**kwargs):
            inner = pb_utils.InferenceRequest(
                model_name="request_info", inputs=[pb_utils.Tensor("INPUT0", np.array([1], np.int32))],
                requested_output_names=["REQUEST_ID", "CORRELATION_ID", "FLAGS", "TIMEOUT", "PARAMETERS",
                                        "REQUESTED_OUTPUTS"], **kwargs).exec()  # fmt: skip
            if inner.has_error():
                return {"error": inner.error().message()}
            view = {}
            for tensor in inner.output_tensors():
                value = tensor.as_numpy()[0]
                view[tensor.name()] = value.decode() if isinstance(value, bytes) else value.item()
            return view

        return {
            "plain": ask(lambda: child_view()),
            "everything": ask(lambda: child_view(request_id="bls-1", correlation_id=12, flags=0, timeout=100000,
                                                 parameters={"s": "x", "i": 7, "b": True})),  # fmt: skip
            "string_correlation": ask(lambda: child_view(correlation_id="c-1")),
            "model_version": ask(lambda: child_view(model_version=1)),
            "missing_version": ask(lambda: child_view(model_version=3)),
        }

    def probe_response_api(self, request):
        empty = pb_utils.InferenceResponse()
        tensor = pb_utils.Tensor("A", np.ones(1, np.int8))
        full = pb_utils.InferenceResponse(output_tensors=[tensor])
        failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("why"))
        return {
            "empty": [ask(empty.output_tensors), ask(empty.has_error), ask(lambda: empty.error())],
            "full": [ask(lambda: [t.name() for t in full.output_tensors()]), ask(full.has_error)],
            "failed": [ask(lambda: failed.error().message()), ask(failed.has_error), ask(failed.output_tensors)],
            "by_name": ask(lambda: pb_utils.get_output_tensor_by_name(full, "A").name()),
            "by_name_missing": ask(lambda: pb_utils.get_output_tensor_by_name(full, "Z")),
            "input_by_name_missing": ask(lambda: pb_utils.get_input_tensor_by_name(request, "Z")),
            "positional": ask(lambda: [t.name() for t in pb_utils.InferenceResponse([tensor]).output_tensors()]),
            "not_a_tensor": raised_type(lambda: pb_utils.InferenceResponse(output_tensors=["x"])),
        }

    def probe_config_api(self, request):
        config = json.loads(self.args["model_config"])
        base = {"name": "m", "max_batch_size": 4, "input": [{"name": "I", "data_type": "TYPE_FP32", "dims": [2]}],
                "output": [{"name": "O", "data_type": "TYPE_INVALID", "dims": []}]}  # fmt: skip

        def on(action):
            def run():
                mc = pb_utils.ModelConfig(json.dumps(base))
                action(mc)
                return mc.as_dict()
            return run

        return {
            "input_config": ask(lambda: pb_utils.get_input_config_by_name(config, "MODE")),
            "input_config_missing": ask(lambda: pb_utils.get_input_config_by_name(config, "NOPE")),
            "output_config_missing": ask(lambda: pb_utils.get_output_config_by_name({}, "NOPE")),
            "decoupled": ask(lambda: pb_utils.using_decoupled_model_transaction_policy(config)),
            "decoupled_true": ask(lambda: pb_utils.using_decoupled_model_transaction_policy(
                {"model_transaction_policy": {"decoupled": True}})),
            "decoupled_absent": ask(lambda: pb_utils.using_decoupled_model_transaction_policy({})),
            "as_dict": ask(on(lambda mc: None)),
            "max_batch_size_larger": ask(on(lambda mc: mc.set_max_batch_size(8))),
            "max_batch_size_smaller": ask(on(lambda mc: mc.set_max_batch_size(2))),
            "max_batch_size_zero": ask(on(lambda mc: mc.set_max_batch_size(0))),
            "dynamic_batching": ask(on(lambda mc: mc.set_dynamic_batching())),
            "dynamic_batching_twice": ask(on(lambda mc: (mc.set_dynamic_batching(), mc.set_dynamic_batching()))),
            "dynamic_batching_over_sequence": ask(lambda: (lambda mc: mc.set_dynamic_batching())(
                pb_utils.ModelConfig(json.dumps({**base, "sequence_batching": {}})))),
            "add_input_new": ask(on(lambda mc: mc.add_input({"name": "J", "data_type": "TYPE_INT32", "dims": [1],
                                                               "optional": True}))),
            "add_input_same": ask(on(lambda mc: mc.add_input({"name": "I", "data_type": "TYPE_FP32", "dims": [2]}))),
            "add_input_other_dtype": ask(on(lambda mc: mc.add_input({"name": "I", "data_type": "TYPE_INT32", "dims": [2]}))),
            "add_input_other_dims": ask(on(lambda mc: mc.add_input({"name": "I", "data_type": "TYPE_FP32", "dims": [3]}))),
            "add_input_unknown_field": ask(on(lambda mc: mc.add_input({"name": "K", "data_type": "TYPE_FP32", "dims": [1],
                                                                        "reshape": {"shape": [1]}}))),
            "add_input_no_dims": ask(on(lambda mc: mc.add_input({"name": "K", "data_type": "TYPE_FP32"}))),
            "add_input_no_type": ask(on(lambda mc: mc.add_input({"name": "K", "dims": [1]}))),
            "add_input_no_name": raised_type(on(lambda mc: mc.add_input({"data_type": "TYPE_FP32", "dims": [1]}))),
            "add_output_fills_invalid": ask(on(lambda mc: mc.add_output({"name": "O", "data_type": "TYPE_FP16", "dims": [4]}))),
            "add_output_unknown_field": ask(on(lambda mc: mc.add_output({"name": "P", "data_type": "TYPE_FP32", "dims": [1],
                                                                          "optional": True}))),
            "add_output_label": ask(on(lambda mc: mc.add_output({"name": "P", "data_type": "TYPE_FP32", "dims": [1],
                                                                  "label_filename": "l.txt"}))),
            "policy": ask(on(lambda mc: mc.set_model_transaction_policy({"decoupled": True}))),
            "policy_unknown": ask(on(lambda mc: mc.set_model_transaction_policy({"other": True}))),
            "policy_change": ask(lambda: (lambda mc: (mc.set_model_transaction_policy({"decoupled": False}),
                                                      mc.set_model_transaction_policy({"decoupled": True})))(
                pb_utils.ModelConfig(json.dumps(base)))),
            "from_dict": raised_type(lambda: pb_utils.ModelConfig(base).as_dict()),
        }  # fmt: skip

    def probe_logger(self, request):
        logger = pb_utils.Logger
        return {
            "levels": ask(lambda: [int(logger.INFO), int(logger.WARNING), int(logger.ERROR), int(logger.VERBOSE)]),
            "level_enum": ask(lambda: [int(logger.LogLevel.INFO), int(logger.LogLevel.VERBOSE)]),
            "log": ask(lambda: logger.log("probe default level")),
            "log_level": ask(lambda: logger.log("probe warning", logger.WARNING)),
            "log_keyword": ask(lambda: logger.log(message="probe keyword", level=logger.ERROR)),
            "log_info": ask(lambda: logger.log_info("probe info")),
            "log_verbose": ask(lambda: logger.log_verbose("probe verbose")),
            "log_int_level": raised_type(lambda: logger.log("probe int", 1)),
        }

    def probe_metrics_api(self, request):
        family = pb_utils.MetricFamily
        return {
            "kinds": ask(lambda: [int(family.COUNTER), int(family.GAUGE), int(family.HISTOGRAM)]),
        }
