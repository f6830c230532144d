"""The stub's side of its connection to the server: the socket, the shared-memory region, and the frames both carry.

Frames are `<u32 header length><u32 payload length><header><payload>`. The header is JSON, or for the frames of every
request (`execute`, `executed`, `response`) struct-packed binary whose first byte is the op; the server's `binary.rs`
documents that layout. Tensor bytes live in the region: its first `<input bytes>` are the server's (request inputs,
valid until the request is done), the rest is this process's (outputs and BLS inputs, a ring freed when the server
acknowledges the frames that named them). A small tensor (up to SMALL bytes), or one that does not fit, travels
inline in the frame's payload.
"""

import collections
import json
import mmap
import struct
import threading

PREFIX = struct.Struct("<II")
ALIGN = 64
# One encoder for every frame: json.dumps with options builds a new one per call.
ENCODE = json.JSONEncoder(separators=(",", ":")).encode

# The binary frames (binary.rs).
EXECUTE, EXECUTED, RESPONSE = 1, 2, 3
FAILED = FINAL = 1
EMPTY = 2
INLINE = 1 << 63
# Tensors up to this size travel in the frame itself: less work on both sides than a block of the ring.
SMALL = 4096
EXECUTE_HEAD = struct.Struct("<BxxxIQQ")  # op, requests, ack, id
REQUEST_HEAD = struct.Struct("<QIIII")  # key, flags, outputs bytes, inputs bytes, extras bytes
INPUT_HEAD = struct.Struct("<IIB")  # name bytes, rank, datatype
FRAME_HEAD = struct.Struct("<IIBBxxIQ")  # the prefix, then op, flags, count, id
RESPONSE_HEAD = struct.Struct("<IiI")  # outputs, error code (-1: none), error bytes
OUTPUT_HEAD = struct.Struct("<IIBxxxQQ")  # name bytes, rank, datatype, location, size
U32 = struct.Struct("<I")


class Ring:
    """Allocations in [base, end), freed oldest first once the server has read the frames naming them."""

    def __init__(self, base, end):
        self.base, self.end = base, end
        self.blocks = collections.deque()  # (start, stop, frame sequence)

    def alloc(self, size):
        size = (size + ALIGN - 1) & ~(ALIGN - 1)
        if not self.blocks:
            return self.base if size <= self.end - self.base else None
        head, tail = self.blocks[0][0], self.blocks[-1][1]
        if tail > head:
            if self.end - tail >= size:
                return tail
            if head - self.base >= size:
                return self.base
            return None
        return tail if head - tail >= size else None

    def record(self, start, size, sequence):
        self.blocks.append((start, start + ((size + ALIGN - 1) & ~(ALIGN - 1)), sequence))

    def release(self, acknowledged):
        while self.blocks and self.blocks[0][2] <= acknowledged:
            self.blocks.popleft()


class Connection:
    """The socket, the region, and the frames both carry."""

    def __init__(self, sock, region_fd, region_size, input_size):
        self.sock = sock
        self.reader = sock.makefile("rb", buffering=1 << 16)
        self.region = mmap.mmap(region_fd, region_size)
        self.view = memoryview(self.region)
        self.ring = Ring(input_size, region_size)
        # `lock` orders whole frames; `ring_lock` guards only the ring, so the reader thread can take
        # acknowledgements while a sender waits on a full socket.
        self.lock = threading.Lock()
        self.ring_lock = threading.Lock()
        self.sequence = 0

    def read(self):
        """The next frame as (op, header, payload): an `execute` header stays binary, others are JSON dicts."""
        reader = self.reader
        prefix = reader.read(8)
        if len(prefix) < 8:
            return None, None, None
        header_size, payload_size = PREFIX.unpack(prefix)
        header = reader.read(header_size)
        if len(header) < header_size:
            return None, None, None
        payload = b""
        if payload_size:
            # Writable, as the region is: a model may change its inputs' arrays in place.
            payload = bytearray(payload_size)
            if reader.readinto(payload) < payload_size:
                return None, None, None
        if header[0] == EXECUTE:
            ack = EXECUTE_HEAD.unpack_from(header)[2]
            op = "execute"
        else:
            header = json.loads(header)
            ack = header.get("ack")
            op = header["op"]
        if ack is not None and self.ring.blocks:
            with self.ring_lock:
                self.ring.release(ack)
        return op, header, payload

    def tensor(self, desc, payload):
        """A view of a tensor's bytes a JSON frame names: in the region, or in the frame's payload."""
        size = desc["size"]
        if "shm" in desc:
            return self.view[desc["shm"] : desc["shm"] + size]
        return memoryview(payload)[desc["inline"] : desc["inline"] + size]

    def _place(self, data, size, sequence, inline, inline_size):
        """Where a tensor's bytes go: appended to `inline` (INLINE | offset) when small or when the ring has no room,
        else copied into the ring (its offset)."""
        start = None
        if size > SMALL:
            with self.ring_lock:
                start = self.ring.alloc(size)
                if start is not None:
                    self.ring.record(start, size, sequence)
        if start is None:
            inline.append(data)
            return INLINE | inline_size
        self.view[start : start + size] = data
        return start

    def send(self, header, tensors=()):
        """Sends a JSON frame; `tensors` are (descriptor dict, bytes view) pairs, placed in the ring or inline."""
        with self.lock:
            self.sequence += 1
            inline, inline_size = [], 0
            for desc, data in tensors:
                size = desc["size"] = data.nbytes
                location = self._place(data, size, self.sequence, inline, inline_size)
                if location & INLINE:
                    desc["inline"] = inline_size
                    inline_size += size
                else:
                    desc["shm"] = location
            body = ENCODE(header).encode()
            self.sock.sendall(b"".join([PREFIX.pack(len(body), inline_size), body, *inline]))

    def send_failed(self, ident, text):
        """An `executed` frame of an execute that failed."""
        frame = failed_frame(ident, text)
        with self.lock:
            # The server acknowledges every frame it reads, this one too.
            self.sequence += 1
            self.sock.sendall(frame)

    def send_responses(self, op, flags, ident, responses):
        """An `executed` (of `responses`, InferenceResponse objects) or `response` frame (of one, or none)."""
        with self.lock:
            # Counted once sent: a frame that cannot be built goes as send_failed's instead (ring blocks it
            # placed are then freed one frame late, never early).
            frame = self._responses_frame(op, flags, ident, responses, self.sequence + 1)
            self.sequence += 1
            self.sock.sendall(frame)

    def _responses_frame(self, op, flags, ident, responses, sequence):
        parts = [b""]
        append = parts.append
        inline, inline_size, place = [], 0, self._place
        for response in responses:
            if response.has_error():
                error = response.error()
                message = str(error.message()).encode("utf-8", "replace")
                code = error.code()
                append(RESPONSE_HEAD.pack(0, code if 0 <= code <= 0x7FFFFFFF else 1, len(message)))
                append(message)
                continue
            outputs = response.output_tensors()
            append(RESPONSE_HEAD.pack(len(outputs), -1, 0))
            for tensor in outputs:
                data = tensor._wire_bytes()
                size = data.nbytes
                if size <= SMALL:
                    location = INLINE | inline_size
                    inline.append(data)
                    inline_size += size
                else:
                    location = place(data, size, sequence, inline, inline_size)
                    if location & INLINE:
                        inline_size += size
                name = NAME_BYTES.get(tensor._name) or name_bytes(tensor._name)
                shape = tensor._shape
                rank = len(shape)
                append(OUTPUT_HEAD.pack(len(name), rank, NUMBER_OF_KSERVE[tensor._datatype], location, size))
                append(name)
                if rank:
                    append((DIMS.get(rank) or dims_struct(rank)).pack(*shape))
        parts[0] = FRAME_HEAD.pack(FRAME_HEAD.size - 8 + sum(map(len, parts)), inline_size, op, flags, len(responses), ident)
        parts += inline
        return b"".join(parts)


def failed_frame(ident, text):
    message = text.encode("utf-8", "replace")
    return FRAME_HEAD.pack(FRAME_HEAD.size - PREFIX.size + 4 + len(message), 0, EXECUTED, FAILED, 0, ident) + \
        U32.pack(len(message)) + message


# Filled from pb_utils once it is imported.
NUMBER_OF_KSERVE = {}
KSERVE_OF_NUMBER = {}
# Encoded output names, and the decoded parts of `execute` frames, by their bytes: requests repeat them.
NAME_BYTES = {}
DECODED_NAMES = {}
DECODED_INPUTS = {}
DIMS = {}
CACHE_LIMIT = 512


def remember(cache, key, value):
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def name_bytes(name):
    return remember(NAME_BYTES, name, str(name).encode("utf-8", "replace"))


def dims_struct(rank):
    dims = DIMS.get(rank)
    return dims if dims is not None else remember(DIMS, rank, struct.Struct(f"<{rank}q"))


def decode_names(blob):
    """A request's output names: the outputs part of an `execute` request."""
    names, at, end = [], 0, len(blob)
    while at < end:
        (size,) = U32.unpack_from(blob, at)
        names.append(blob[at + 4 : at + 4 + size].decode())
        at += 4 + size
    return remember(DECODED_NAMES, blob, tuple(names))


def decode_inputs(blob):
    """A request's inputs part: ((name, datatype, shape), ...), with the struct of its locations and sizes."""
    inputs, at, end = [], 0, len(blob)
    while at < end:
        size, rank, number = INPUT_HEAD.unpack_from(blob, at)
        at += INPUT_HEAD.size
        name = blob[at : at + size].decode()
        at += size
        shape = dims_struct(rank).unpack_from(blob, at) if rank else ()
        at += 8 * rank
        inputs.append((name, KSERVE_OF_NUMBER[number], shape))
    return remember(DECODED_INPUTS, blob, (tuple(inputs), struct.Struct(f"<{2 * len(inputs)}Q")))
