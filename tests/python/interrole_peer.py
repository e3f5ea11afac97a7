#!/usr/bin/env python3
"""An interrole multicast client in Python, written from docs/protocol.md alone.

It speaks the relay's multicast protocol (sections 1, 3 to 9: the token, the address, the
frames, RESUME and READY) and reads and writes interrole envelopes (section 10), so it exchanges
typed events with Rust buses rather than opaque bytes. It needs the standard library and, to
connect, websocket-client (`pip install websocket-client`).

    interrole_peer.py self-test
        Checks the encoders and decoders against the byte examples of docs/protocol.md. Offline.

    interrole_peer.py exchange --url ws://HOST:PORT --topic TOPIC --instance ID --key-name NAME
        (the key in the environment variable INTERROLE_KEY)
        The scenario of crates/interrole/tests/python_peer.rs, one line on stdout per step:
          ready                 subscribed (READY received) and publishing
          published <seq>       the first JobReport below, acknowledged by the relay
          skipped <tag> <from>  an event of a type this peer does not know
          received <json>       the first JobReport from another instance: its header and value
          echoed <seq>          that value published back by this peer, acknowledged
          done                  both connections closed
        Any failure is written to stderr and the exit status is 1.
"""

import base64
import hashlib
import hmac
import json
import math
import os
import struct
import sys
import time
import urllib.parse

# ---------------------------------------------------------------------------------------------
# Section 1: tokens and addresses

SAFE = "-._~"  # what `E` leaves as it is, with A-Z a-z 0-9


def escape(text):
    """`E` of section 1: everything but A-Z a-z 0-9 - . _ ~ escaped, upper-case hex."""
    return urllib.parse.quote(text, safe=SAFE)


def sign(resource, key_name, key, expiry):
    """A shared access signature for `resource` (a URL such as https://host/path)."""
    sr = escape(resource)
    mac = hmac.new(key.encode(), (sr + "\n" + str(expiry)).encode(), hashlib.sha256)
    sig = base64.b64encode(mac.digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={escape(sig)}&se={expiry}&skn={escape(key_name)}"


def multicast_url(base, topic, action, instance, token):
    """`{base}/$hc/{path}?sb-hc-action=..&sb-hc-id=..&sb-hc-token=..`: the token escaped once
    more, as a query parameter value."""
    path = "/".join(escape(segment) for segment in topic.split("/"))
    return (
        f"{base.rstrip('/')}/$hc/{path}?sb-hc-action={action}"
        f"&sb-hc-id={escape(instance)}&sb-hc-token={escape(token)}"
    )


def token_resource(base, topic):
    """The resource a token names: the entity, https://host/path, without `$hc/`."""
    parts = urllib.parse.urlsplit(base)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/{topic}"


# ---------------------------------------------------------------------------------------------
# Names (sections 4 and 10)

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def valid_name(name):
    """An instance id or type tag: 1 to 256 ASCII letters, digits and - _ . :"""
    return 1 <= len(name.encode()) <= 256 and all(c in NAME_CHARS for c in name)


class ProtocolError(Exception):
    pass


class Reader:
    """Bytes read from the front; running past the end is an error."""

    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def take(self, n, what):
        if n > len(self.data) - self.pos:
            raise ProtocolError(f"{what}: {n} bytes wanted, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what):
        return self.take(1, what)[0]

    def rest(self):
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    def left(self):
        return len(self.data) - self.pos


# ---------------------------------------------------------------------------------------------
# Sections 4 and 5: frames

MESSAGE_VERSION = 2
PUBLISH, ACK, REJECT, RESUME, EVENT, MISSED, READY = 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13
FRAME_NAMES = {PUBLISH: "PUBLISH", ACK: "ACK", REJECT: "REJECT", RESUME: "RESUME",
               EVENT: "EVENT", MISSED: "MISSED", READY: "READY"}
MAX_MESSAGE = 4 * 1024 * 1024 + 1024
MAX_FRAME = 1024 * 1024 + 268
MAX_FRAMES = 8192
MAX_ENTRIES = 8192
MAX_REASON = 1024
MAX_ENVELOPE = 1024 * 1024


def put_varint(out, value):
    """Unsigned LEB128, seven bits a byte, least significant first."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint {value} out of range")
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return


def read_varint(r, what):
    value = 0
    for i in range(10):
        b = r.byte(what)
        if i == 9 and b > 1:
            raise ProtocolError(f"{what} does not fit in 64 bits")
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i > 0:
                raise ProtocolError(f"{what} is not minimally encoded")
            return value
    raise ProtocolError(f"{what} is longer than 10 bytes")


def put_instance(out, instance):
    """A varint length and the id; None (length 0) where the field is optional."""
    data = b"" if instance is None else instance.encode()
    put_varint(out, len(data))
    out += data


def read_instance(r, what, required):
    length = read_varint(r, what)
    if length == 0:
        if required:
            raise ProtocolError(f"{what} is empty")
        return None
    if length > 256:
        raise ProtocolError(f"{what} of {length} bytes")
    name = r.take(length, what).decode("utf-8")
    if not valid_name(name):
        raise ProtocolError(f"{what} {name!r} is not an instance id")
    return name


def read_seq(r, what):
    seq = read_varint(r, what)
    if seq == 0:
        raise ProtocolError(f"{what} is 0")
    return seq


def frame(frame_type, body):
    out = bytearray([frame_type])
    put_varint(out, len(body))
    return bytes(out) + bytes(body)


def publish_frame(seq, target, envelope):
    body = bytearray()
    put_varint(body, seq)
    put_instance(body, target)
    body += envelope
    return frame(PUBLISH, body)


def resume_frame(replay_unlisted, positions):
    body = bytearray([0x01 if replay_unlisted else 0x00])
    put_varint(body, len(positions))
    for sender, seq in positions:
        put_instance(body, sender)
        put_varint(body, seq)
    return frame(RESUME, body)


def message(*frames, version=MESSAGE_VERSION):
    return bytes([version]) + b"".join(frames)


def read_positions(r, what, seq_at_least_one):
    count = read_varint(r, f"{what} count")
    if count > MAX_ENTRIES:
        raise ProtocolError(f"{what} of {count} senders")
    positions = []
    for _ in range(count):
        sender = read_instance(r, f"{what} sender", True)
        seq = read_seq(r, f"{what} seq") if seq_at_least_one else read_varint(r, f"{what} seq")
        if any(s == sender for s, _ in positions):
            raise ProtocolError(f"{what} lists {sender} twice")
        positions.append((sender, seq))
    return positions


def decode_message(data):
    """A message's version and frames, each a tuple whose first item names its type."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes")
    if not data or data[0] not in (1, 2):
        raise ProtocolError(f"message version {data[:1].hex() or 'missing'}")
    version = data[0]
    if len(data) == 1:
        raise ProtocolError("message without frames")
    r = Reader(data)
    r.pos = 1
    frames = []
    while r.left():
        if len(frames) >= MAX_FRAMES:
            raise ProtocolError("too many frames")
        code = r.byte("frame type")
        if code not in FRAME_NAMES or (code == READY and version < 2):
            raise ProtocolError(f"frame type {code:#04x} in a version {version} message")
        length = read_varint(r, "frame length")
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes")
        body = Reader(r.take(length, f"{FRAME_NAMES[code]} frame"))
        if code == PUBLISH:
            f = ("PUBLISH", read_seq(body, "PUBLISH seq"), read_instance(body, "target", False),
                 body.rest())
        elif code == ACK:
            f = ("ACK", read_varint(body, "ACK seq"))
        elif code == REJECT:
            seq, reject_code = read_seq(body, "REJECT seq"), body.byte("REJECT code")
            length = read_varint(body, "REJECT reason length")
            if length > MAX_REASON:
                raise ProtocolError(f"REJECT reason of {length} bytes")
            f = ("REJECT", seq, reject_code, body.take(length, "REJECT reason").decode("utf-8"))
        elif code in (RESUME, READY):
            name = FRAME_NAMES[code]
            flags = body.byte(f"{name} flags")
            if flags & ~0x01:
                raise ProtocolError(f"{name} flags {flags:#04x}")
            f = (name, bool(flags & 0x01), read_positions(body, name, code == READY))
        elif code == EVENT:
            f = ("EVENT", read_instance(body, "EVENT sender", True), read_seq(body, "EVENT seq"),
                 body.rest())
        else:
            f = ("MISSED", read_instance(body, "MISSED sender", False),
                 read_varint(body, "MISSED count"))
        if body.left():
            raise ProtocolError(f"{body.left()} bytes after the last field of {f[0]}")
        frames.append(f)
    return version, frames


# ---------------------------------------------------------------------------------------------
# Section 10: bincode 2, standard configuration, as serde drives it

class Shape:
    """How one serde shape is written and read: encode(value, out) and decode(reader)."""

    def __init__(self, name, encode, decode):
        self.name, self.encode, self.decode = name, encode, decode

    def to_bytes(self, value):
        out = bytearray()
        self.encode(value, out)
        return bytes(out)

    def from_bytes(self, data):
        """The value that fills all of `data`: bytes left over are an error."""
        r = Reader(data)
        value = self.decode(r)
        if r.left():
            raise ProtocolError(f"{r.left()} bytes left after a {self.name}")
        return value


def put_bincode_uint(out, value):
    if value <= 250:
        out.append(value)
    elif value < 1 << 16:
        out.append(0xFB)
        out += value.to_bytes(2, "little")
    elif value < 1 << 32:
        out.append(0xFC)
        out += value.to_bytes(4, "little")
    elif value < 1 << 64:
        out.append(0xFD)
        out += value.to_bytes(8, "little")
    else:
        out.append(0xFE)
        out += value.to_bytes(16, "little")


def read_bincode_uint(r, bits):
    first = r.byte(f"u{bits}")
    if first <= 250:
        return first
    width = {0xFB: 2, 0xFC: 4, 0xFD: 8, 0xFE: 16}.get(first)
    if width is None or width * 8 > bits:
        raise ProtocolError(f"integer form {first:#04x} for a u{bits}")
    return int.from_bytes(r.take(width, f"u{bits}"), "little")


def unsigned(bits):
    def encode(value, out):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{value} is not a u{bits}")
        if bits == 8:
            out.append(value)
        else:
            put_bincode_uint(out, value)

    def decode(r):
        return r.byte("u8") if bits == 8 else read_bincode_uint(r, bits)

    return Shape(f"u{bits}", encode, decode)


def signed(bits):
    def encode(value, out):
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{value} is not an i{bits}")
        if bits == 8:
            out.append(value & 0xFF)
        else:
            put_bincode_uint(out, 2 * value if value >= 0 else -2 * value - 1)

    def decode(r):
        if bits == 8:
            b = r.byte("i8")
            return b - 256 if b > 127 else b
        z = read_bincode_uint(r, bits)
        return z // 2 if z % 2 == 0 else -(z + 1) // 2

    return Shape(f"i{bits}", encode, decode)


U8, U16, U32, U64, U128 = (unsigned(b) for b in (8, 16, 32, 64, 128))
I8, I16, I32, I64, I128 = (signed(b) for b in (8, 16, 32, 64, 128))


def _bool_decode(r):
    b = r.byte("bool")
    if b > 1:
        raise ProtocolError(f"bool {b}")
    return b == 1


BOOL = Shape("bool", lambda v, out: out.append(1 if v else 0), _bool_decode)
F32 = Shape("f32", lambda v, out: out.extend(struct.pack("<f", v)),
            lambda r: struct.unpack("<f", r.take(4, "f32"))[0])
F64 = Shape("f64", lambda v, out: out.extend(struct.pack("<d", v)),
            lambda r: struct.unpack("<d", r.take(8, "f64"))[0])


def _str_encode(value, out):
    data = value.encode("utf-8")
    put_bincode_uint(out, len(data))
    out += data


def _str_decode(r):
    return r.take(read_bincode_uint(r, 64), "string").decode("utf-8")


STRING = Shape("string", _str_encode, _str_decode)


def _bytes_encode(value, out):
    put_bincode_uint(out, len(value))
    out += value


BYTES = Shape("bytes", _bytes_encode, lambda r: r.take(read_bincode_uint(r, 64), "bytes"))


def _char_decode(r):
    first = r.byte("char")
    width = 1 if first < 0x80 else 2 if first < 0xE0 else 3 if first < 0xF0 else 4
    return (bytes([first]) + r.take(width - 1, "char")).decode("utf-8")


CHAR = Shape("char", lambda v, out: out.extend(v.encode("utf-8")), _char_decode)
UNIT = Shape("unit", lambda v, out: None, lambda r: None)


def option(inner):
    def encode(value, out):
        if value is None:
            out.append(0)
        else:
            out.append(1)
            inner.encode(value, out)

    def decode(r):
        tag = r.byte("option tag")
        if tag > 1:
            raise ProtocolError(f"option tag {tag}")
        return inner.decode(r) if tag else None

    return Shape(f"option of {inner.name}", encode, decode)


def seq(item):
    def encode(values, out):
        put_bincode_uint(out, len(values))
        for v in values:
            item.encode(v, out)

    def decode(r):
        return [item.decode(r) for _ in range(read_bincode_uint(r, 64))]

    return Shape(f"sequence of {item.name}", encode, decode)


def mapping(key, value):
    def encode(values, out):
        put_bincode_uint(out, len(values))
        for k, v in values.items():
            key.encode(k, out)
            value.encode(v, out)

    def decode(r):
        return {key.decode(r): value.decode(r) for _ in range(read_bincode_uint(r, 64))}

    return Shape("map", encode, decode)


def tuple_of(*items):
    def encode(values, out):
        for item, v in zip(items, values, strict=True):
            item.encode(v, out)

    return Shape("tuple", encode, lambda r: [item.decode(r) for item in items])


def struct_of(name, *fields):
    """Fields in declaration order, no names; values are dicts, as serde_json writes structs."""
    def encode(value, out):
        for field, shape in fields:
            shape.encode(value[field], out)

    return Shape(name, encode, lambda r: {field: shape.decode(r) for field, shape in fields})


def enum_of(name, *variants):
    """`variants`: (name, shape) in declaration order; shape None for a unit variant, a shape
    for a newtype variant, a tuple_of or struct_of for the others. Values are as serde_json
    writes enums: "Idle" for a unit variant, {"Running": 300} for the others."""
    index = {v[0]: i for i, v in enumerate(variants)}

    def encode(value, out):
        variant, inner = (value, None) if isinstance(value, str) else next(iter(value.items()))
        i = index[variant]
        put_bincode_uint(out, i)
        if variants[i][1] is not None:
            variants[i][1].encode(inner, out)

    def decode(r):
        i = read_bincode_uint(r, 32)
        if i >= len(variants):
            raise ProtocolError(f"{name} has no variant {i}")
        variant, shape = variants[i]
        return variant if shape is None else {variant: shape.decode(r)}

    return Shape(name, encode, decode)


ENVELOPE_VERSION_PLAIN = 1  # no headers
ENVELOPE_VERSION = 2  # version 1, then the contract version, the codec and the headers
CODECS = {0: "bincode", 1: "json", 2: "msgpack"}
HEADERS = mapping(STRING, STRING)
HEADER = struct_of(
    "header",
    ("sender", STRING), ("seq", U64), ("type_tag", STRING), ("timestamp_micros", U64),
    ("epoch", U64), ("directed", BOOL), ("n", U64), ("reply_to", U64),
)


def valid_header(key, value):
    return (1 <= len(key) <= 128 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in key)
            and len(value.encode("utf-8")) <= 4096
            and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value))


def encode_envelope(sender, seq_no, type_tag, payload, timestamp_micros=None, epoch=0,
                    directed=False, n=0, reply_to=0, headers=None, contract=1, codec=0):
    """An envelope in no stream (epoch 0) unless told otherwise; `payload` already encoded.
    Version 1 when it can (no headers, contract version 1, bincode), version 2 otherwise."""
    if timestamp_micros is None:
        timestamp_micros = time.time_ns() // 1000
    header = {"sender": sender, "seq": seq_no, "type_tag": type_tag,
              "timestamp_micros": timestamp_micros, "epoch": epoch, "directed": directed,
              "n": n, "reply_to": reply_to}
    headers = headers or {}
    if not headers and contract == 1 and codec == 0:
        return bytes([ENVELOPE_VERSION_PLAIN]) + HEADER.to_bytes(header) + bytes(payload)
    if not all(valid_header(k, v) for k, v in headers.items()) or contract < 1:
        raise ValueError(f"invalid headers {headers} or contract version {contract}")
    more = bytearray()
    put_bincode_uint(more, contract)
    more.append(codec)
    return (bytes([ENVELOPE_VERSION]) + HEADER.to_bytes(header) + bytes(more)
            + HEADERS.to_bytes(headers) + bytes(payload))


def decode_envelope(data):
    """The header (a dict, with "headers" a dict) and the payload's bytes."""
    if not data or data[0] not in (ENVELOPE_VERSION_PLAIN, ENVELOPE_VERSION):
        raise ProtocolError(f"envelope version {data[:1].hex() or 'missing'}")
    r = Reader(data)
    r.pos = 1
    header = HEADER.decode(r)
    if not valid_name(header["sender"]) or not valid_name(header["type_tag"]):
        raise ProtocolError(f"invalid sender or tag in {header}")
    if header["seq"] == 0:
        raise ProtocolError("envelope seq 0")
    headers, header["contract"], header["codec"] = {}, 1, 0
    if data[0] == ENVELOPE_VERSION:
        header["contract"] = read_bincode_uint(r, 32)
        header["codec"] = r.byte("codec")
        if header["contract"] == 0 or header["codec"] not in CODECS:
            raise ProtocolError(f"contract version {header['contract']}, codec {header['codec']}")
        for _ in range(read_bincode_uint(r, 64)):
            key, value = STRING.decode(r), STRING.decode(r)
            if key in headers or not valid_header(key, value):
                raise ProtocolError(f"invalid or repeated header {key!r}")
            headers[key] = value
        if len(headers) > 64 or sum(len(k) + len(v.encode()) for k, v in headers.items()) > 16384:
            raise ProtocolError("headers over their limits")
    header["headers"] = headers
    return header, r.rest()


# The event type of the section 10 examples, which the Rust test exchanges with this peer.
PHASE = enum_of("Phase", ("Idle", None), ("Running", U32),
                ("Failed", struct_of("Failed", ("code", U16), ("reason", STRING))))
JOB_REPORT = struct_of(
    "JobReport",
    ("job", U64), ("drift", I64), ("worker", STRING), ("note", option(STRING)),
    ("samples", seq(U32)), ("healthy", BOOL), ("phase", PHASE), ("ratio", F64),
)
JOB_REPORT_TAG = "demo.job-report"

# ---------------------------------------------------------------------------------------------
# Connections (sections 3, 5 and 6)


class Closed(Exception):
    """The relay closed the connection (or it failed)."""


def connect(base, topic, action, instance, key_name, key):
    import websocket  # websocket-client; only needed to connect

    token = sign(token_resource(base, topic), key_name, key, int(time.time()) + 3600)
    url = multicast_url(base, topic, action, instance, token)
    try:
        return websocket.create_connection(url, timeout=20)
    except (websocket.WebSocketException, OSError) as e:
        raise Closed(f"the {action} handshake failed: {e}") from None


def receive(ws, deadline):
    """The next binary message's frames, or Closed with the relay's code and reason."""
    import websocket

    ws.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        opcode, data = ws.recv_data()
    except websocket.WebSocketTimeoutException:
        raise TimeoutError("nothing from the relay in time") from None
    except (websocket.WebSocketException, OSError) as e:
        raise Closed(f"connection failed: {e}") from None
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        raise Closed(f"closed by the relay with {code}: {data[2:].decode(errors='replace')}")
    if opcode != websocket.ABNF.OPCODE_BINARY:
        raise ProtocolError(f"a message of opcode {opcode}")
    return decode_message(data)


class Publisher:
    def __init__(self, base, topic, instance, key_name, key):
        self.instance = instance
        self.ws = connect(base, topic, "publish", instance, key_name, key)
        self.next_seq = 1
        self.acked = 0

    def publish(self, type_tag, payload, target=None, headers=None):
        """Sends one event in its envelope; returns its sequence number."""
        seq_no = self.next_seq
        self.next_seq += 1
        envelope = encode_envelope(self.instance, seq_no, type_tag, payload, headers=headers)
        if len(envelope) > MAX_ENVELOPE:
            raise ValueError(f"an envelope of {len(envelope)} bytes is over the limit")
        self.ws.send_binary(message(publish_frame(seq_no, target, envelope)))
        return seq_no

    def wait_acked(self, seq_no, timeout):
        deadline = time.monotonic() + timeout
        while self.acked < seq_no:
            _, frames = receive(self.ws, deadline)
            for f in frames:
                if f[0] == "ACK":
                    self.acked = max(self.acked, f[1])
                elif f[0] == "REJECT":
                    raise ProtocolError(f"the relay refused event {f[1]}: code {f[2]}, {f[3]}")
                else:
                    raise ProtocolError(f"a {f[0]} frame on a publisher connection")

    def close(self):
        self.ws.close(1000)


class Subscriber:
    def __init__(self, base, topic, instance, key_name, key):
        self.ws = connect(base, topic, "subscribe", instance, key_name, key)
        self.pending = []
        self.missed = 0

    def resume(self, timeout):
        """RESUME in a version 2 message, then READY: from then on every event published on
        the path reaches this subscriber. Returns READY's (partial, positions)."""
        self.ws.send_binary(message(resume_frame(False, [])))
        deadline = time.monotonic() + timeout
        while True:
            _, frames = receive(self.ws, deadline)
            for i, f in enumerate(frames):
                if f[0] == "READY":
                    self.take(frames[i + 1:])
                    return f[1], f[2]
                if f[0] != "MISSED":
                    raise ProtocolError(f"a {f[0]} frame before READY")
                self.missed += f[2]

    def take(self, frames):
        for f in frames:
            if f[0] == "EVENT":
                self.pending.append(f[1:])
            elif f[0] == "MISSED":
                self.missed += f[2]
            else:
                raise ProtocolError(f"a {f[0]} frame on a subscriber connection")

    def next_event(self, deadline):
        """(sender, seq, envelope bytes) of the next EVENT."""
        while not self.pending:
            _, frames = receive(self.ws, deadline)
            self.take(frames)
        return self.pending.pop(0)

    def close(self):
        self.ws.close(1000)


# ---------------------------------------------------------------------------------------------
# The scenario of crates/interrole/tests/python_peer.rs

FROM_PYTHON = {
    "job": 7,
    "drift": -1_000_000_000_000,
    "worker": "pythön ✓",
    "note": None,
    "samples": [],
    "healthy": False,
    "phase": {"Failed": {"code": 503, "reason": "busy"}},
    "ratio": 0.1,
}


def say(line):
    print(line, flush=True)


def exchange(args):
    key = os.environ["INTERROLE_KEY"]
    where = (args["--url"], args["--topic"], args["--instance"], args["--key-name"], key)
    timeout = 20.0
    subscriber = Subscriber(*where)
    subscriber.resume(timeout)
    publisher = Publisher(*where)
    say("ready")

    first = publisher.publish(JOB_REPORT_TAG, JOB_REPORT.to_bytes(FROM_PYTHON))
    publisher.wait_acked(first, timeout)
    say(f"published {first}")

    deadline = time.monotonic() + timeout
    while True:
        sender, seq_no, envelope = subscriber.next_event(deadline)
        header, payload = decode_envelope(envelope)
        if (header["sender"], header["seq"]) != (sender, seq_no):
            raise ProtocolError(f"envelope {header} in the EVENT of {sender} {seq_no}")
        if header["type_tag"] != JOB_REPORT_TAG:
            say(f"skipped {header['type_tag']} {sender}")
            continue
        value = JOB_REPORT.from_bytes(payload)
        if math.isnan(value["ratio"]) or math.isinf(value["ratio"]):
            raise ProtocolError(f"ratio {value['ratio']} cannot travel as JSON")
        say("received " + json.dumps({"header": header, "value": value}, ensure_ascii=False))
        break

    echo = publisher.publish(JOB_REPORT_TAG, JOB_REPORT.to_bytes(value), headers=header["headers"])
    publisher.wait_acked(echo, timeout)
    say(f"echoed {echo}")
    publisher.close()
    subscriber.close()
    say("done")


# ---------------------------------------------------------------------------------------------
# Self-test: the byte examples of docs/protocol.md


def h(text):
    return bytes.fromhex(text)


def check(what, got, expected):
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


def self_test():
    # Section 1: the token test vectors (key `secretkey`, se 1700000000).
    for resource, sig in [
        ("http://contoso.servicebus.windows.net/hyco/",
         "Sac1n1QBEa7E6Gr99cFOu8c5kPgp+vK0eoGCgX3tULs="),
        ("http://contoso.servicebus.windows.net/hyco",
         "kLTf9mN4FuYV2IYYjHCfwXx3BaWurunhZboEHHy/ds8="),
        ("http://contoso.servicebus.windows.net:443/hyco",
         "rAGZkhUzFiZ18CsY/n2q7+6wwpIXD83wrBDPpAGw0cY="),
    ]:
        token = sign(resource, "k", "secretkey", 1700000000)
        check(f"sig of {resource}", token.split("&sig=")[1].split("&")[0], escape(sig))

    # Section 4: varints.
    for value, text in [(0, "00"), (127, "7f"), (128, "80 01"), (300, "ac 02"),
                        ((1 << 64) - 1, "ff ff ff ff ff ff ff ff ff 01")]:
        out = bytearray()
        put_varint(out, value)
        check(f"varint {value}", bytes(out), h(text))
        check(f"varint {text}", read_varint(Reader(h(text)), "v"), value)
    for bad in ["80 00", "ff ff ff ff ff ff ff ff ff 02"]:
        try:
            read_varint(Reader(h(bad)), "v")
        except ProtocolError:
            continue
        raise AssertionError(f"varint {bad} accepted")

    # Sections 5 and 8: frames.
    check("RESUME of a new subscriber", message(resume_frame(False, [])), h("02 10 02 00 00"))
    check("READY of a new path", decode_message(h("02 13 02 00 00")), (2, [("READY", False, [])]))
    two = message(publish_frame(1, None, b"hi"), publish_frame(2, "w2", b"\x00"))
    check("two PUBLISH frames", two, h("02 01 04 01 00 68 69 01 05 02 02 77 32 00"))
    check("ACK", decode_message(h("02 02 01 02")), (2, [("ACK", 2)]))
    check("REJECT", decode_message(h("02 03 07 03 04 04 66 75 6c 6c")),
          (2, [("REJECT", 3, 4, "full")]))
    check("RESUME w1 41", message(resume_frame(True, [("w1", 41)])),
          h("02 10 06 01 01 02 77 31 29"))
    check("READY w1 300, w2 7", decode_message(h("02 13 0b 00 02 02 77 31 ac 02 02 77 32 07")),
          (2, [("READY", False, [("w1", 300), ("w2", 7)])]))
    check("EVENT and MISSED", decode_message(h("02 11 07 02 77 31 ac 02 68 69 12 02 00 05")),
          (2, [("EVENT", "w1", 300, b"hi"), ("MISSED", None, 5)]))
    try:
        decode_message(h("01 13 02 00 00"))
        raise AssertionError("READY accepted in a version 1 message")
    except ProtocolError:
        pass

    # Section 10: integers and the other shapes.
    for shape, value, text in [
        (U64, 0, "00"), (U64, 250, "fa"), (U64, 251, "fb fb 00"), (U64, 300, "fb 2c 01"),
        (U64, 65_535, "fb ff ff"), (U64, 65_536, "fc 00 00 01 00"),
        (U64, 4_294_967_295, "fc ff ff ff ff"), (U64, 4_294_967_296, "fd 00 00 00 00 01 00 00 00"),
        (U64, 1_700_000_000_000_000, "fd 00 40 1e 18 24 0a 06 00"),
        (U64, (1 << 64) - 1, "fd" + " ff" * 8), (U128, (1 << 128) - 1, "fe" + " ff" * 16),
        (I64, 0, "00"), (I64, -1, "01"), (I64, 1, "02"), (I64, -2, "03"), (I64, 2, "04"),
        (I64, 125, "fa"), (I64, -126, "fb fb 00"), (I64, -300, "fb 57 02"),
        (I64, (1 << 63) - 1, "fd fe" + " ff" * 7), (I64, -(1 << 63), "fd" + " ff" * 8),
        (I8, -1, "ff"), (U8, 255, "ff"), (U16, 300, "fb 2c 01"),
        (BOOL, True, "01"), (F32, 1.5, "00 00 c0 3f"), (F64, -2.5, "00 00 00 00 00 00 04 c0"),
        (CHAR, "A", "41"), (CHAR, "é", "c3 a9"), (CHAR, "✓", "e2 9c 93"),
        (STRING, "", "00"), (STRING, "hi", "02 68 69"), (STRING, "é", "02 c3 a9"),
        (BYTES, b"\x01\x02\x03", "03 01 02 03"), (option(U32), None, "00"),
        (option(U32), 5, "01 05"), (option(option(U8)), 3, "01 01 03"),
        (seq(U32), [1, 251], "02 01 fb fb 00"), (seq(STRING), [], "00"),
        (mapping(STRING, U32), {"a": 1, "b": 300}, "02 01 61 01 01 62 fb 2c 01"),
        (UNIT, None, ""), (struct_of("Point", ("x", I32), ("y", I32)), {"x": -1, "y": 300},
                           "01 fb 58 02"),
        (tuple_of(U8, U64, STRING), [1, 300, "x"], "01 fb 2c 01 01 78"),
        (tuple_of(U16, U16, U16), [1, 2, 3], "01 02 03"),
        (PHASE, "Idle", "00"), (PHASE, {"Running": 300}, "01 fb 2c 01"),
        (PHASE, {"Failed": {"code": 503, "reason": "busy"}}, "02 fb f7 01 04 62 75 73 79"),
        (struct_of("Duration", ("secs", U64), ("nanos", U32)), {"secs": 1, "nanos": 500_000_000},
         "01 fc 00 65 cd 1d"),
    ]:
        check(f"{shape.name} {value!r}", shape.to_bytes(value), h(text))
        check(f"{shape.name} {text}", shape.from_bytes(h(text)), value)
    check("a longer form", U64.from_bytes(h("fb 05 00")), 5)
    for shape, text in [(U16, "fc 05 00 00 00"), (U32, "fd 01 00 00 00 00 00 00 00"),
                        (U64, "ff"), (BOOL, "02"), (option(U8), "02 01"), (PHASE, "03"),
                        (STRING, "05 68 69")]:
        try:
            shape.from_bytes(h(text))
        except ProtocolError:
            continue
        raise AssertionError(f"{shape.name} {text} accepted")

    # Section 10: the two envelopes.
    recycle = struct_of("Recycle", ("role", STRING), ("grace_secs", U32))
    example_1 = h("01 02 77 31 01 0c 64 65 6d 6f 2e 72 65 63 79 63 6c 65"
                  " fd 00 40 1e 18 24 0a 06 00 00 00 00 00 03 77 65 62 1e")
    check("example 1", encode_envelope("w1", 1, "demo.recycle",
                                       recycle.to_bytes({"role": "web", "grace_secs": 30}),
                                       timestamp_micros=1_700_000_000_000_000), example_1)
    header, payload = decode_envelope(example_1)
    check("example 1 header", header, {
        "sender": "w1", "seq": 1, "type_tag": "demo.recycle",
        "timestamp_micros": 1_700_000_000_000_000, "epoch": 0, "directed": False, "n": 0,
        "reply_to": 0, "headers": {}, "contract": 1, "codec": 0})
    check("example 1 payload", recycle.from_bytes(payload), {"role": "web", "grace_secs": 30})

    epoch = 1_700_000_000_000_000
    report = {"job": 1 << 40, "drift": -300, "worker": "w2", "note": "ok",
              "samples": [0, 250, 251, 65_536], "healthy": True,
              "phase": {"Failed": {"code": 503, "reason": "busy"}}, "ratio": -2.5}
    example_2 = h(
        "01 02 77 32 fd 06 40 1e 18 24 0a 06 00"
        " 0f 64 65 6d 6f 2e 6a 6f 62 2d 72 65 70 6f 72 74"
        " fd 00 40 1e 18 24 0a 06 00 fd 00 40 1e 18 24 0a 06 00 01 02 2a"
        " fd 00 00 00 00 00 01 00 00 fb 57 02 02 77 32 01 02 6f 6b"
        " 04 00 fa fb fb 00 fc 00 00 01 00 01 02 fb f7 01 04 62 75 73 79"
        " 00 00 00 00 00 00 04 c0")
    check("example 2", encode_envelope("w2", epoch + 6, JOB_REPORT_TAG,
                                       JOB_REPORT.to_bytes(report), timestamp_micros=epoch,
                                       epoch=epoch, directed=True, n=2, reply_to=42), example_2)
    header, payload = decode_envelope(example_2)
    check("example 2 header", (header["seq"], header["epoch"], header["directed"], header["n"],
                               header["reply_to"]), (epoch + 6, epoch, True, 2, 42))
    check("example 2 payload", JOB_REPORT.from_bytes(payload), report)
    example_3 = h("02" + " ".join(f"{b:02x}" for b in example_1[1:-5]) + " 01 00"
                  + " 02 06 74 65 6e 61 6e 74 04 61 63 6d 65 07 61 74 74 65 6d 70 74 01 32"
                  + " 03 77 65 62 1e")
    headers = {"tenant": "acme", "attempt": "2"}
    check("example 3", encode_envelope("w1", 1, "demo.recycle",
                                       recycle.to_bytes({"role": "web", "grace_secs": 30}),
                                       timestamp_micros=1_700_000_000_000_000,
                                       headers=headers), example_3)
    header, payload = decode_envelope(example_3)
    check("example 3 headers", list(header["headers"].items()), list(headers.items()))
    check("example 3 payload", recycle.from_bytes(payload), {"role": "web", "grace_secs": 30})
    for bad in [b"\x03" + example_1[1:], example_1[:10], example_1[:4] + b"\x00" + example_1[5:],
                example_3[:-10], example_3.replace(b"attempt", b"tenant\x00")]:
        try:
            decode_envelope(bad)
        except ProtocolError:
            continue
        raise AssertionError(f"envelope {bad.hex()} accepted")
    say("self-test passed")


def main(argv):
    if argv[1:2] == ["self-test"]:
        self_test()
        return 0
    if argv[1:2] == ["exchange"]:
        args = dict(zip(argv[2::2], argv[3::2]))
        missing = {"--url", "--topic", "--instance", "--key-name"} - args.keys()
        if missing or "INTERROLE_KEY" not in os.environ:
            print(f"missing: {sorted(missing) or 'INTERROLE_KEY'}", file=sys.stderr)
            return 2
        try:
            exchange(args)
        except (ProtocolError, Closed, TimeoutError, ValueError) as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
