"""Tritium's python-backend stub: one process per model instance, running the user's model.py.

Started by the server as `python tritium_python_stub.py <socket fd> <region fd> <region bytes> <input bytes>`.
Control messages travel on the socket as frames, tensor bytes through a shared-memory region
(`tritium_python_wire.py`). `execute`, `init`, `auto_complete` and `finalize` run on the main thread, one at a time, as in
Triton. The main thread also reads the socket (a request costs no hand-over between threads); while model code
waits for a BLS or model-control answer on the main thread, that wait reads the socket itself, and other threads'
answers are handed to them as frames come. A model whose `execute` is `async def` runs an event loop on the main
thread; a reader thread then takes every frame instead.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import inspect
import json
import os
import queue
import socket
import struct
import signal
import sys
import threading
import traceback

from tritium_python_wire import (
    DECODED_INPUTS, DECODED_NAMES, EMPTY, EXECUTE_HEAD, EXECUTED, FINAL, INLINE, KSERVE_OF_NUMBER, NUMBER_OF_KSERVE,
    PREFIX, REQUEST_HEAD, RESPONSE, Connection, decode_inputs, decode_names,
)  # fmt: skip


def tensor_desc(tensor):
    return {"name": tensor.name(), "datatype": tensor._datatype, "shape": tensor.shape()}, tensor._wire_bytes()


class Runtime:
    """`pb_utils._runtime`: what model code reaches the server through."""

    def __init__(self, conn, utils):
        self.conn = conn
        self.utils = utils
        self.waiters = {}
        self.next_id = 0
        self.cancelled = set()
        self.ids = threading.Lock()
        self.frames = None
        self.host = None

    def _new_id(self, waiter):
        with self.ids:
            self.next_id += 1
            self.waiters[self.next_id] = waiter
            return self.next_id

    def send_response(self, key, response, final):
        flags = FINAL if final else 0
        if response is None:
            self.conn.send_responses(RESPONSE, flags | EMPTY, key, ())
        else:
            self.conn.send_responses(RESPONSE, flags, key, (response,))

    def is_cancelled(self, key):
        return key in self.cancelled

    def _bls_frame(self, request, decoupled, waiter):
        descs = [tensor_desc(t) for t in request.inputs()]
        header = {
            "op": "bls", "id": self._new_id(waiter), "model": request.model_name(), "version": request.model_version(),
            "inputs": [d for d, _ in descs], "outputs": sorted(request.requested_output_names()),
            "request_id": request.request_id(), "correlation_id": request.correlation_id(), "flags": request.flags(),
            "timeout": request.timeout(), "parameters": request.parameters(), "decoupled": bool(decoupled),
        }  # fmt: skip
        trace_key = getattr(request.trace(), "_key", None)
        if trace_key is not None:
            header["trace"] = trace_key
        self.conn.send(header, descs)

    def infer(self, request, decoupled):
        answers = queue.SimpleQueue()
        self._bls_frame(request, decoupled, answers.put)
        if decoupled:
            return self._stream(answers)
        return self.frames.wait(answers)[0]

    def _stream(self, answers):
        while True:
            response, final = self.frames.wait(answers)
            yield response
            if final:
                return

    def async_infer(self, request, decoupled):
        loop = asyncio.get_running_loop()
        if self.frames.work is None:
            # The main thread runs the event loop now, so it cannot read the answer itself.
            self.frames.start_reader()
        if decoupled:
            answers = asyncio.Queue()

            def put(item):
                loop.call_soon_threadsafe(answers.put_nowait, item)

            self._bls_frame(request, True, put)
            return self._async_stream_collect(answers)
        future = loop.create_future()

        def settle(item):
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(item[0]))

        self._bls_frame(request, False, settle)
        return future

    async def _async_stream_collect(self, answers):
        responses = []
        while True:
            response, final = await answers.get()
            responses.append(response)
            if final:
                return iter(responses)


    def bls_answer(self, header, payload):
        """A `bls_response` frame: one response (or error) of a BLS request."""
        utils = self.utils
        error = header.get("error")
        if error:
            response = utils.InferenceResponse(error=utils.TritonError(error["message"], error["code"]))
        else:
            outputs = [utils.Tensor._from_buffer(d["name"], d["datatype"], d["shape"], bytes(self.conn.tensor(d, payload)))
                       for d in header.get("outputs", [])]  # fmt: skip
            response = utils.InferenceResponse(output_tensors=outputs)
            response._parameters = header.get("parameters", "{}")
        final = header.get("final", True)
        with self.ids:
            waiter = self.waiters.pop(header["id"], None) if final else self.waiters.get(header["id"])
        if waiter is not None:
            waiter((response, final))

    def control(self, action, model, version="", config="", files=()):
        answers = queue.SimpleQueue()
        blobs = [({"name": path, "datatype": "UINT8", "shape": [len(content)]}, memoryview(content))
                 for path, content in files]  # fmt: skip
        header = {"op": "control", "id": self._new_id(answers.put), "action": action, "model": model,
                  "version": version, "config": config}  # fmt: skip
        if blobs:
            header["files"] = [desc for desc, _ in blobs]
        self.conn.send(header, blobs)
        answer = self.frames.wait(answers)
        if answer.get("error"):
            error = answer["error"]
            if action == "load":
                # Triton's words around the server's own.
                error = (f"Failed to load model: Failed to process the request for model '{self.host.instance}', "
                         f"message: {error}")  # fmt: skip
            raise self.utils.TritonModelException(error)
        return answer.get("ready", False)

    def metric(self, words, action, family, **fields):
        """A custom-metrics call (pb_utils.MetricFamily and Metric): the series' value, or the error in Triton's words
        (`words` first)."""
        answers = queue.SimpleQueue()
        self.conn.send({"op": "metric", "id": self._new_id(answers.put), "action": action, "family": family, **fields})
        answer = self.frames.wait(answers)
        if answer.get("error"):
            raise self.utils.TritonModelException(f"{words}: Failed to process the request for model "
                                                  f"'{self.host.instance}', message: {answer['error']}")  # fmt: skip
        return answer.get("value", 0.0)

    def control_answer(self, header):
        with self.ids:
            waiter = self.waiters.pop(header["id"], None)
        if waiter is not None:
            waiter(header)

    def log(self, level, message, file, line):
        self.conn.send({"op": "log", "level": level, "message": message, "file": file, "line": line})

    def default_sender(self, request):
        """Where the response sender of a request to a model that is not decoupled sends its one response."""
        return self.host.sender_answers().collector(request)


class SenderAnswers:
    """The answers of one `execute` of a model that is not decoupled whose requests answer through their response
    senders (one response each, with the final flag or before it), from any thread: the `executed` frame goes once
    `execute` has returned and every request has its answer."""

    def __init__(self, host, ident, requests):
        self.host, self.ident, self.requests = host, ident, requests
        self.lock = threading.Lock()
        self.answers = [None] * len(requests)
        self.counts = [0] * len(requests)
        self.done = [False] * len(requests)
        self.senders = set()
        self.returned = False
        self.finished = False

    def collector(self, request):
        index = next(i for i, r in enumerate(self.requests) if r is request)
        self.senders.add(index)
        return lambda response, final: self.collect(index, response, final)

    def collect(self, index, response, final):
        utils = self.host.utils
        with self.lock:
            if self.finished:
                return
            if response is not None:
                self.counts[index] += 1
                count = self.counts[index]
                # A second response is an error for the request, in the words of Triton's gRPC port.
                self.answers[index] = response if count == 1 else utils.InferenceResponse(
                    error=utils.TritonError(f"expected a single response, got {count}"))  # fmt: skip
            self.done[index] = self.done[index] or final
            ready = self._ready()
        if ready:
            self.host.conn.send_responses(EXECUTED, 0, self.ident, self.answers)

    def returned_from_execute(self, result):
        """What `execute` returned: the answers of the requests that did not answer through a sender that sent."""
        utils = self.host.utils
        with self.lock:
            if result is not None and not isinstance(result, list):
                self.finished = True
                return self.host.failed(f"Expected a list in the execute return, found type '{type(result)}'.")
            for index in range(len(self.requests)):
                if self.counts[index] or (result is None and index in self.senders):
                    continue
                returned = result[index] if result is not None and index < len(result) else None
                if not isinstance(returned, utils.InferenceResponse):
                    self.finished = True
                    return self.host.failed(f"Expected an 'InferenceResponse' object in the execute function return "
                                            f"list, found type '{type(returned)}'.")  # fmt: skip
                self.answers[index], self.done[index] = returned, True
            self.returned = True
            ready = self._ready()
        if ready:
            self.host.conn.send_responses(EXECUTED, 0, self.ident, self.answers)
        return None

    def abandon(self):
        with self.lock:
            self.finished = True

    def _ready(self):
        if self.finished or not self.returned or not all(self.done):
            return False
        self.finished = True
        return True


class ModelHost:
    """The user's model: loaded, initialized, executed and finalized on the main thread."""

    def __init__(self, conn, runtime, utils):
        self.conn, self.runtime, self.utils = conn, runtime, utils
        self.current = None  # (execute id, its requests) while `execute` runs
        self.answers = None  # their SenderAnswers, once one of them asked for its response sender
        self.model = None
        self.decoupled = False
        self.name, self.version, self.instance = "", 1, ""
        self.loop = None
        self.background = None  # the event loop of a decoupled model's `async def execute`, on its own thread

    def load_module(self, model_file):
        folder = os.path.dirname(model_file)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location("model", model_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["model"] = module
        spec.loader.exec_module(module)
        return module.TritonPythonModel

    def auto_complete(self, header):
        self.utils._state.model_dir = os.path.dirname(header["model_file"])
        cls = self.load_module(header["model_file"])
        config = self.utils.ModelConfig(json.dumps(header["config"]))
        if hasattr(cls, "auto_complete_config"):
            returned = cls.auto_complete_config(config)
            config = returned if returned is not None else config
        return {"op": "auto_completed", "config": config.as_dict()}

    def init(self, header):
        self.utils._state.model_dir = os.path.dirname(header["model_file"])
        cls = self.load_module(header["model_file"])
        args = header["args"]
        self.name, self.version = args["model_name"], int(args["model_version"])
        self.instance = args["model_instance_name"]
        self.decoupled = bool(header.get("decoupled"))
        self.model = cls()
        if hasattr(self.model, "initialize"):
            self.run(self.model.initialize(args))
        return {"op": "initialized"}

    def run_background(self, coroutine):
        """Runs a decoupled model's `async def execute` on an event loop of its own thread, as Triton does: the
        next request's execute starts while this one waits. An exception is logged (its responses are the model's
        to send)."""
        if self.background is None:
            self.background = asyncio.new_event_loop()
            threading.Thread(target=self.background.run_forever, name="tritium-async-execute", daemon=True).start()
        asyncio.run_coroutine_threadsafe(coroutine, self.background).add_done_callback(self._background_done)

    def _background_done(self, future):
        error = None if future.cancelled() else future.exception()
        if error is not None:
            text = f"Failed to finish the async execute of model '{self.instance}': {exception_text(error)}"
            self.runtime.log(2, text, "", 0)

    def run(self, result):
        """The value of a call that may be a coroutine (an `async def` method)."""
        if not inspect.isawaitable(result):
            return result
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop.run_until_complete(result)

    def requests(self, header, payload):
        """The `InferenceRequest`s of a binary `execute` header, and the execute's id."""
        _, count, _, ident = EXECUTE_HEAD.unpack_from(header)
        at = EXECUTE_HEAD.size
        view, payload_view = self.conn.view, None
        new_tensor, new_request = self.utils.Tensor._from_buffer, self.utils.InferenceRequest._from_server
        decoupled, name, version = self.decoupled, self.name, self.version
        made = []
        for _ in range(count):
            key, flags, outputs_size, inputs_size, extras_size = REQUEST_HEAD.unpack_from(header, at)
            at += REQUEST_HEAD.size
            blob = header[at : at + outputs_size]
            outputs = DECODED_NAMES.get(blob)
            if outputs is None:
                outputs = decode_names(blob)
            at += outputs_size
            blob = header[at : at + inputs_size]
            described = DECODED_INPUTS.get(blob)
            if described is None:
                described = decode_inputs(blob)
            at += inputs_size
            extras = json.loads(header[at : at + extras_size]) if extras_size else None
            at += extras_size
            descs, locations = described
            places = locations.unpack_from(header, at)
            at += locations.size
            inputs = []
            for i, (tensor_name, datatype, shape) in enumerate(descs):
                where, size = places[2 * i], places[2 * i + 1]
                if where < INLINE:
                    buffer = view[where : where + size]
                else:
                    if payload_view is None:
                        # Writable even when empty (a frame without payload has `b""`), as the region is.
                        payload_view = memoryview(payload or bytearray())
                    where -= INLINE
                    buffer = payload_view[where : where + size]
                inputs.append(new_tensor(tensor_name, datatype, shape, buffer))
            made.append(new_request(key, inputs, outputs, flags, extras, decoupled, name, version))
        return ident, made

    def sender_answers(self):
        if self.answers is None:
            if self.current is None:
                raise self.utils.TritonModelException("a response sender of a model that is not decoupled is only "
                                                      "available while its execute runs")  # fmt: skip
            self.answers = SenderAnswers(self, *self.current)
        return self.answers

    def execute(self, header, payload):
        ident, requests = self.requests(header, payload)
        self.current, self.answers = (ident, requests), None
        try:
            result = self.model.execute(requests)
            if result.__class__ is not list:
                if self.decoupled and inspect.iscoroutine(result):
                    self.run_background(result)
                    result = None
                else:
                    result = self.run(result)
        except Exception as error:  # noqa: BLE001 - model code may raise anything; Triton's wording follows
            if self.answers is not None:
                self.answers.abandon()
            self.current = self.answers = None
            self.conn.send_failed(ident, self.failed(exception_text(error)))
            return
        answers, self.current, self.answers = self.answers, None, None
        if answers is not None and not self.decoupled:
            problem = answers.returned_from_execute(result)
            if problem is not None:
                self.conn.send_failed(ident, problem)
            return
        if self.decoupled:
            if result is not None:
                self.conn.send_failed(ident, self.failed(
                    f"Python model '{self.instance}' is using the decoupled mode and the execute function must "
                    "return None."))  # fmt: skip
                return
            self.conn.send_responses(EXECUTED, 0, ident, ())
            return
        problem = check_responses(result, len(requests), self.utils)
        if problem is not None:
            self.conn.send_failed(ident, self.failed(problem))
            return
        try:
            self.conn.send_responses(EXECUTED, 0, ident, result)
        except OSError:
            raise
        except Exception as error:  # noqa: BLE001 - an output of anything model code made that cannot be sent
            self.conn.send_failed(ident, self.failed(exception_text(error)))

    def failed(self, text):
        return f"Failed to process the request(s) for model '{self.instance}', message: {text}"

    def finalize(self):
        if self.model is not None and hasattr(self.model, "finalize"):
            self.run(self.model.finalize())


def check_responses(result, count, utils):
    """Triton's wording for an `execute` return it cannot use (None, where Triton never answers, included)."""
    if result is None:
        return "Expected a list in the execute return, found type '<class 'NoneType'>'."
    if not isinstance(result, list):
        return f"Expected a list in the execute return, found type '{type(result)}'."
    if len(result) != count:
        return (f"Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
                f"InferenceRequest(s) size is:{count}, and InferenceResponse(s) size is:{len(result)}\n")  # fmt: skip
    for response in result:
        if not isinstance(response, utils.InferenceResponse):
            return (f"Expected an 'InferenceResponse' object in the execute function return list, found type "
                    f"'{type(response)}'.")  # fmt: skip
    return None


_HERE = os.path.dirname(os.path.abspath(__file__))
# The stub's own files and the modules of triton_python_backend_utils (tritium_pb_*.py).
OUR_FILES = tuple(os.path.join(_HERE, name) for name in os.listdir(_HERE) if name.endswith(".py"))


def exception_text(error):
    """An exception as Triton words it: `Type: message`, then the model's own frames, innermost first."""
    text = f"{type(error).__name__}: {error}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) not in OUR_FILES]
    if frames:
        text += "\n\nAt:\n" + "".join(f"  {f.filename}({f.lineno}): {f.name}\n" for f in reversed(frames))
    return text


class Frames:
    """Who reads the socket: the main thread between and during its waits, or a reader thread once started.
    Answers to waiting threads are settled as they are read; frames that run model code are the main thread's."""

    def __init__(self, conn, runtime):
        self.conn, self.runtime = conn, runtime
        self.main = threading.main_thread()
        self.work = None  # the reader thread's queue of main-thread frames, once it runs
        self.deferred = collections.deque()

    def read(self):
        try:
            frame = self.conn.read()
        except (OSError, ValueError, IndexError, struct.error):
            frame = (None, None, None)
        if frame[0] is None:
            # The server has gone (or dropped this stub): nobody waits for anything this process or its
            # helpers do. The whole group goes, this process with it: exiting alone would race the lifeline
            # thread and could leave a forked helper running.
            os.killpg(0, signal.SIGKILL)
            os._exit(0)
        return frame

    def settle(self, op, header, payload):
        """Handles a frame that answers someone; False for one the main thread must run."""
        if op == "execute":
            return False
        if op == "bls_response":
            self.runtime.bls_answer(header, payload)
        elif op == "control_response":
            self.runtime.control_answer(header)
        elif op == "cancel":
            self.runtime.cancelled.add(header["request"])
        elif op != "ack":
            return False
        return True

    def next_work(self):
        if self.deferred:
            return self.deferred.popleft()
        if self.work is not None:
            return self.work.get()
        read, settle = self.read, self.settle
        while True:
            frame = read()
            if frame[0] == "execute" or not settle(*frame):
                return frame

    def wait(self, answers):
        """The next item of `answers`, reading frames meanwhile when this is the main thread and nobody else reads."""
        if self.work is None and threading.current_thread() is self.main:
            while answers.empty():
                frame = self.read()
                if not self.settle(*frame):
                    self.deferred.append(frame)
        return answers.get()

    def start_reader(self):
        self.work = queue.SimpleQueue()
        threading.Thread(target=self._reader, name="tritium-reader", daemon=True).start()

    def _reader(self):
        while True:
            frame = self.read()
            if not self.settle(*frame):
                self.work.put(frame)


def watch_lifeline(fd):
    """Ends this stub's whole process group once the server is gone, however it went: the server alone holds
    the pipe's write end, so the read sees end-of-file when it exits."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)


def main():
    socket_fd, region_fd, region_size, input_size = (int(a) for a in sys.argv[1:5])
    lifeline_fd = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    if lifeline_fd >= 0:
        threading.Thread(target=watch_lifeline, args=(lifeline_fd,), name="tritium-lifeline", daemon=True).start()
    sock = socket.socket(fileno=socket_fd)
    try:
        import numpy  # noqa: F401 - checked here so that a missing numpy is one clear load error

        import triton_python_backend_utils as utils
    except ImportError as error:
        body = json.dumps({"op": "fatal", "message": f"the python backend needs numpy in the model's Python "
                           f"environment ({sys.executable}): {error}"}).encode()  # fmt: skip
        sock.sendall(PREFIX.pack(len(body), 0) + body)
        return 1
    NUMBER_OF_KSERVE.update(utils._NUMBER_OF_KSERVE)
    KSERVE_OF_NUMBER.update(utils._KSERVE_OF_NUMBER)
    conn = Connection(sock, region_fd, region_size, input_size)
    runtime = Runtime(conn, utils)
    frames = runtime.frames = Frames(conn, runtime)
    utils._state.runtime = runtime
    host = runtime.host = ModelHost(conn, runtime, utils)
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    conn.send({"op": "hello", "python": version, "numpy": numpy.__version__, "pid": os.getpid()})
    while True:
        op, header, payload = frames.next_work()
        if op == "execute":
            host.execute(header, payload)
            continue
        try:
            if op == "init":
                conn.send(host.init(header))
                # An event loop on the main thread cannot also read the socket: a reader thread does.
                if inspect.iscoroutinefunction(getattr(host.model, "execute", None)) and frames.work is None:
                    frames.start_reader()
            elif op == "auto_complete":
                conn.send(host.auto_complete(header))
            elif op == "finalize":
                host.finalize()
                conn.send({"op": "finalized"})
                break
        except Exception as error:  # noqa: BLE001 - model code may raise anything
            conn.send({"op": "error", "message": exception_text(error), "traceback": traceback.format_exc()})
            if op == "finalize":
                break
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
