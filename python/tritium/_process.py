"""Process instances of a bound function (``ModelConfig(instance_kind="process")``).

Each instance is a Python interpreter of its own, started with ``sys.executable`` (a fresh ``exec``,
never a ``fork`` of the multi-threaded server), that imports the function by reference as
``multiprocessing``'s spawn start method does: a module-level function (one in a ``__main__`` script
too: the child runs the script as ``__mp_main__``, so its serving code must sit under
``if __name__ == "__main__":``) or a picklable callable. A call takes a free instance, sends it the
request's tensors and waits, the GIL released, for the answer. A message is a pickled header on a
socketpair; a tensor of ``SHARED_MIN_BYTES`` or more travels through the instance's shared memory (a
memfd mapped by both processes, ``SHARED_BYTES`` each way, one copy in and one out), a smaller one
(or one that does not fit) follows the header on the socketpair as it is (measured on a 2-core box,
round trips of 4 KiB: 0.02 ms by the pipe, 0.03 ms by shared memory; 256 KiB: 0.14 and 0.06 ms;
4 MiB: 14 and 0.8 ms). An instance that dies, or is killed
past the model's ``timeout_s``, fails its call with UNAVAILABLE and is started again for the next one.
No child outlives the server: each watches a lifeline pipe whose only writer is the server process,
and ``Server.stop`` and interpreter exit end and reap them.
"""

from __future__ import annotations

import atexit
import mmap
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing import Pipe

import numpy as np

from ._model import _KSERVE_BY_DTYPE

# Set in a child: a script that binds process instances at import (its serving code not under
# `if __name__ == "__main__":`) must not start children (or servers) of its own there.
_IN_CHILD = False
# How long a child may take to start and import the function (a module may load its model at import).
START_TIMEOUT_S = 300.0
# How long a stopping child may take to exit before it is killed.
_STOP_GRACE_S = 2.0
# Each way (inputs, outputs) per instance: tensors that fit go through shared memory; the rest by the pipe.
# Its pages are taken only as tensors touch them.
SHARED_BYTES = 32 << 20
SHARED_MIN_BYTES = 64 << 10
_DTYPE_BY_KSERVE = {name: dtype for dtype, name in _KSERVE_BY_DTYPE.items()}
_CHILD_CODE = "import sys; from tritium._process import _child_main; sys.exit(_child_main(*map(int, sys.argv[1:4])))"

_pools: "weakref.WeakSet[ProcessBinding]" = weakref.WeakSet()
_exiting = False


class InstanceUnavailable(Exception):
    """A process instance died or was killed during a call: the client gets UNAVAILABLE."""


def in_child() -> bool:
    """Whether this interpreter is a process instance of a bound function."""
    return _IN_CHILD


def _remote_error(kind: str, message: str) -> Exception:
    # The child's exception under its own class name, so the client reads the same words as from a thread.
    name = kind if kind.isidentifier() else "Exception"
    return type(name, (Exception,), {"__module__": "builtins"})(message)


def _shared_memory(size: int):
    """An anonymous memfd of ``size`` bytes (None where the platform has none: pipes only)."""
    if not hasattr(os, "memfd_create"):
        return None
    fd = os.memfd_create("tritium-instance")
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size)
    except OSError:
        os.close(fd)
        return None


def _send(conn, kind, tensors=(), extra=None, shared=None, half=0):
    """One message: a pickled header, then the bytes of each fixed-size tensor that did not go into
    ``half`` (0: inputs, 1: outputs) of the ``shared`` mapping, unpickled."""
    header, raws, cursor = [], [], 0
    for name, datatype, shape, payload in tensors:
        if isinstance(payload, list):  # BYTES: a list of bytes, in the header
            header.append((name, datatype, list(shape), payload))
            continue
        raw = payload if isinstance(payload, bytes) else memoryview(np.ascontiguousarray(np.asarray(payload))).cast("B")
        size = len(raw)
        if shared is not None and size >= SHARED_MIN_BYTES and cursor + size <= SHARED_BYTES:
            start = half * SHARED_BYTES + cursor
            shared[start : start + size] = raw
            header.append((name, datatype, list(shape), (start, size)))
            cursor += size
        else:
            header.append((name, datatype, list(shape), None))
            raws.append(raw)
    conn.send_bytes(pickle.dumps((kind, header, extra), protocol=pickle.HIGHEST_PROTOCOL))
    for raw in raws:
        conn.send_bytes(raw)


def _payload(conn, shared, payload):
    if payload is None:
        return conn.recv_bytes()
    if isinstance(payload, tuple):
        start, size = payload
        # A copy: the next message reuses the mapping, and a function may keep its inputs.
        return shared[start : start + size]
    return payload


def _receive(conn, shared=None):
    kind, header, extra = pickle.loads(conn.recv_bytes())
    return kind, [(name, datatype, shape, _payload(conn, shared, payload)) for name, datatype, shape, payload in header], extra


def _check_picklable(model: str, func) -> tuple:
    """The function pickled (by reference for a function) and how a child imports ``__main__`` for it;
    a clear error when another interpreter cannot import it."""
    try:
        data = pickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # noqa: BLE001 - pickle raises several types
        raise ValueError(
            f"model '{model}': its function cannot run in a process instance, which imports it by reference: {error}. "
            "Bind a module-level function (or a picklable callable object); lambdas, closures and functions "
            "defined inside other functions cannot be imported by another interpreter"
        ) from None
    main = None
    if b"__main__" in data:
        module = sys.modules.get("__main__")
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name not in ("__main__", None):
            main = ("name", spec.name)
        elif getattr(module, "__file__", None):
            main = ("path", os.path.abspath(module.__file__))
        else:
            raise ValueError(
                f"model '{model}': its function is defined in __main__ of an interactive session or `python -c`, "
                "which a process instance cannot import: define it in a module or a script file"
            )
    return data, main


class _Instance:
    """One child process; the pool hands it to one call at a time."""

    def __init__(self, pool: "ProcessBinding", index: int):
        self.pool = pool
        self.index = index
        self.proc = None
        self.conn = None
        self.lifeline = None
        # The instance's shared memory, kept across restarts: (fd, mapping) or None.
        self.shared = _shared_memory(2 * SHARED_BYTES)

    @property
    def mapping(self):
        return None if self.shared is None else self.shared[1]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        if _exiting:
            raise InstanceUnavailable(f"the model '{self.pool.model}' is stopping with the interpreter")
        ours, theirs = Pipe(duplex=True)
        life_read, life_write = os.pipe()
        shared_fd = -1 if self.shared is None else self.shared[0]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(theirs.fileno()), str(life_read), str(shared_fd)],
                pass_fds=(theirs.fileno(), life_read) + (() if shared_fd < 0 else (shared_fd,)),
                stdin=subprocess.DEVNULL,
                cwd=os.getcwd(),
            )
        except BaseException:
            ours.close()
            os.close(life_write)
            raise
        finally:
            theirs.close()
            os.close(life_read)
        self.conn, self.lifeline = ours, life_write
        ours.send_bytes(self.pool._setup)

    def handshake(self, deadline: float) -> None:
        """Waits for the child to import the function; raises with its reason when it could not."""
        try:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                self.kill()
                raise RuntimeError(f"process instance {self.index} did not start within {START_TIMEOUT_S:g} s")
            kind, _, extra = _receive(self.conn)
        except (EOFError, OSError):
            how = self.reap()
            raise RuntimeError(f"process instance {self.index} ended ({how}) before it imported the function") from None
        if kind != "ready":
            self.kill()
            raise RuntimeError(f"process instance {self.index} could not import the function: {extra[0]}: {extra[1]}")

    def kill(self) -> str:
        """Ends the child now and reaps it; says how it ended."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        return self.reap()

    def stop(self) -> None:
        """Ends the child gracefully (end of input), killing it past a short grace."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            try:
                self.proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.reap()

    def reap(self) -> str:
        how = "it had not started"
        if self.proc is not None:
            code = self.proc.wait()
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        for closing in (self.conn, self.lifeline):
            try:
                if closing is None:
                    pass
                elif isinstance(closing, int):
                    os.close(closing)
                else:
                    closing.close()
            except OSError:
                pass
        self.conn = self.lifeline = None
        return how


class ProcessBinding:
    """A bound function run by ``count`` child processes; ``_runtime.invoke`` hands it each execution."""

    def __init__(self, model: str, func, outputs, strict: bool, count: int, timeout_s):
        if _IN_CHILD:
            raise RuntimeError(
                "a process instance imported a script that binds process instances at import: put the script's "
                "serving code under `if __name__ == \"__main__\":`, as for multiprocessing"
            )
        data, main = _check_picklable(model, func)
        self.model = model
        self.timeout_s = timeout_s
        self._setup = pickle.dumps(
            {"function": data, "main": main, "sys_path": list(sys.path), "outputs": list(outputs), "strict": strict},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        self._instances = [_Instance(self, i) for i in range(count)]
        self._idle: "queue.SimpleQueue[_Instance]" = queue.SimpleQueue()
        # Restarts of ended instances run beside the calls; close() waits for one under way and
        # keeps later ones from starting a child (the next call starts it then).
        self._lifecycle = threading.Lock()
        self._closed = False
        try:
            self._start_all()
        except RuntimeError as error:
            self.close()
            raise RuntimeError(f"model '{model}': {error}") from None
        for instance in self._instances:
            self._idle.put(instance)
        _pools.add(self)

    def _start_all(self) -> None:
        for instance in self._instances:
            instance.spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        for instance in self._instances:
            instance.handshake(deadline)

    @property
    def pids(self):
        """The pids of the running instances (for tests and monitoring)."""
        return [i.proc.pid for i in self._instances if i.alive()]

    def close(self) -> None:
        """Ends every child and reaps it; a later call starts them again."""
        with self._lifecycle:
            self._closed = True
            for instance in self._instances:
                instance.stop()

    def _release(self, instance: _Instance) -> None:
        """Gives an instance back after a call. One that was ended (killed past its timeout, or
        dead) is started again on a thread of its own first, so that its interpreter's start-up is
        not charged to the next call's timeout."""
        if instance.alive():
            self._idle.put(instance)
            return
        threading.Thread(target=self._restart, args=(instance,), name=f"tritium-restart-{self.model}", daemon=True).start()

    def _restart(self, instance: _Instance) -> None:
        try:
            with self._lifecycle:
                if not self._closed and not _exiting:
                    instance.reap()
                    instance.spawn()
                    instance.handshake(time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            # The next call tries again, and says why if it cannot.
            instance.kill()
        finally:
            self._idle.put(instance)

    def _acquire(self) -> _Instance:
        """A free instance, started again first if it died; whatever is raised here (the server's own
        timeout may send a TimeoutError to a call still waiting for an instance) gives it back."""
        instance = None
        try:
            # Inside the try: a TimeoutError the server sends while this thread waits lands at the first
            # bytecode after get() returns, and the instance must go back, or the pool loses it for good.
            instance = self._idle.get()
            self._closed = False
            if not instance.alive():
                instance.reap()
                instance.spawn()
                instance.handshake(time.monotonic() + START_TIMEOUT_S)
        except BaseException as error:
            if instance is None:
                raise
            if not isinstance(error, (RuntimeError, OSError)) and instance.alive():
                self._idle.put(instance)  # no call reached it: it serves the next one as it is
                raise
            instance.kill()
            self._idle.put(instance)
            if isinstance(error, (RuntimeError, OSError)):
                raise InstanceUnavailable(f"process instance {instance.index} could not be started again: {error}") from None
            raise
        return instance

    def _wait(self, instance: _Instance, deadline):
        """The child's next message, the GIL released while waiting; past the deadline the child is
        killed. A child that died fails the call with UNAVAILABLE."""
        pid = instance.proc.pid
        try:
            conn = instance.conn
            while not conn.poll(None if deadline is None else max(0.0, deadline - time.monotonic())):
                how = instance.kill()
                raise InstanceUnavailable(
                    f"the model '{self.model}' did not return from its Python function within {self.timeout_s:g} s: "
                    f"its process instance "
                    f"{instance.index} (pid {pid}) was ended ({how}) and is started again"
                )
            return _receive(conn, instance.mapping)
        except (EOFError, OSError):
            how = instance.reap()
            raise InstanceUnavailable(
                f"process instance {instance.index} (pid {pid}) died ({how}) during the call; it is started again"
            ) from None
        except InstanceUnavailable:
            raise
        except BaseException:
            # The server's own timeout (a TimeoutError sent to this thread) or an interrupt: the child's
            # answer would come to the next call, so it goes.
            instance.kill()
            raise

    def _deadline(self):
        return None if self.timeout_s is None else time.monotonic() + self.timeout_s

    def _request(self, instance: _Instance, inputs, decoupled: bool, parameters) -> None:
        try:
            _send(instance.conn, "call", inputs, (decoupled, dict(parameters or {})), instance.mapping, 0)
        except (OSError, EOFError):
            how = instance.kill()
            raise InstanceUnavailable(f"process instance {instance.index} died ({how}) before the call reached it; it is started again") from None

    def invoke(self, inputs, decoupled: bool, parameters):
        """One execution, as ``_runtime.invoke``: the answer's tensors, or an iterator of them."""
        if decoupled:
            return self._stream(inputs, parameters)
        instance = None
        try:
            instance = self._acquire()
            self._request(instance, inputs, False, parameters)
            kind, tensors, extra = self._wait(instance, self._deadline())
        finally:
            if instance is not None:
                self._release(instance)
        if kind == "error":
            raise _remote_error(*extra)
        return tensors

    def _stream(self, inputs, parameters):
        instance = None
        ended = False
        try:
            instance = self._acquire()
            self._request(instance, inputs, True, parameters)
            while True:
                # One response at a time, as the thread does: the child runs the generator on to
                # the next item only when asked.
                self._ask(instance, "next")
                kind, tensors, extra = self._wait(instance, self._deadline())
                if kind == "end":
                    ended = True
                    return
                if kind == "error":
                    ended = True
                    raise _remote_error(*extra)
                yield tensors
        finally:
            if instance is not None:
                if not ended and instance.alive():
                    # The receiver went away: the child closes the generator and says so.
                    try:
                        self._ask(instance, "close")
                        while self._wait(instance, time.monotonic() + _STOP_GRACE_S)[0] != "end":
                            pass
                    except Exception:  # noqa: BLE001 - a child that does not answer is ended
                        instance.kill()
                self._release(instance)

    def _ask(self, instance: _Instance, what: str) -> None:
        try:
            instance.conn.send_bytes(pickle.dumps((what, [], None)))
        except (OSError, EOFError, AttributeError):
            how = instance.kill()
            raise InstanceUnavailable(f"process instance {instance.index} died ({how}) during the call; it is started again") from None


def binding(model: str, func, outputs, strict: bool, config):
    """The binding ``Server.bind`` hands the native side: the function itself on threads, or a pool
    of process instances."""
    from ._runtime import Binding

    if config.instance_kind == "thread":
        return Binding(func, outputs, strict)
    return ProcessBinding(model, func, outputs, strict, config.instance_count, config.timeout_s)


@atexit.register
def _close_all() -> None:
    global _exiting
    _exiting = True
    for pool in list(_pools):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - exiting: nothing left to tell
            pass


# The child's side.


def _watch_lifeline(fd: int) -> None:
    # End of file: every writer is gone, the server process first of all.
    while True:
        try:
            if not os.read(fd, 64):
                os._exit(0)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)


def _import_main(how, where) -> None:
    """Runs the server's ``__main__`` as ``__mp_main__`` (its serving code under the ``__main__``
    guard stays out), so that functions pickled as ``__main__.name`` import, as multiprocessing does."""
    import runpy
    import types

    if how == "name":
        namespace = runpy.run_module(where, run_name="__mp_main__", alter_sys=True)
    else:
        namespace = runpy.run_path(where, run_name="__mp_main__")
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _view(datatype, shape, payload):
    if isinstance(payload, list):
        return payload
    # Read-only, as the server's own views of a request are.
    return np.frombuffer(payload, dtype=_DTYPE_BY_KSERVE[datatype]).reshape(shape)


def _child_main(fd: int, lifeline: int, shared_fd: int) -> int:
    global _IN_CHILD
    _IN_CHILD = True
    # Ctrl-C in the terminal reaches the whole process group: the server decides when children end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="tritium-lifeline").start()
    from multiprocessing.connection import Connection

    from ._runtime import Binding, invoke

    conn = Connection(fd)
    shared = None
    if shared_fd >= 0:
        shared = mmap.mmap(shared_fd, 2 * SHARED_BYTES)
        os.close(shared_fd)
    try:
        setup = pickle.loads(conn.recv_bytes())
        sys.path[:] = setup["sys_path"]
        if setup["main"] is not None:
            _import_main(*setup["main"])
        binding = Binding(pickle.loads(setup["function"]), setup["outputs"], setup["strict"])
    except EOFError:
        return 0
    except BaseException as error:  # noqa: BLE001 - the parent says why at bind time
        conn.send_bytes(pickle.dumps(("error", [], (type(error).__name__, str(error)))))
        return 1
    conn.send_bytes(pickle.dumps(("ready", [], os.getpid())))
    while True:
        try:
            kind, tensors, extra = _receive(conn, shared)
        except EOFError:
            return 0
        if kind != "call":
            continue
        decoupled, parameters = extra
        inputs = [(name, datatype, shape, _view(datatype, shape, payload)) for name, datatype, shape, payload in tensors]
        try:
            answer = invoke(binding, inputs, decoupled, parameters)
        except Exception as error:  # noqa: BLE001 - it reaches the client
            _send(conn, "error", (), (type(error).__name__, str(error)))
            continue
        if not decoupled:
            _send(conn, "answer", answer, None, shared, 1)
        else:
            _child_stream(conn, answer, shared)


def _child_stream(conn, answers, shared) -> None:
    while True:
        what = pickle.loads(conn.recv_bytes())[0]
        if what == "close":
            answers.close()
            _send(conn, "end")
            return
        try:
            item = next(answers)
        except StopIteration:
            _send(conn, "end")
            return
        except Exception as error:  # noqa: BLE001 - it reaches the client
            _send(conn, "error", (), (type(error).__name__, str(error)))
            return
        _send(conn, "item", item, None, shared, 1)
