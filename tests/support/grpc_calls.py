"""A real gRPC client (grpcio) for tests/grpc.rs: calls the methods of the gRPC test backend
(tests/support/grpc-backend) with raw-bytes messages (no generated code) and prints what it
saw as one JSON object.

    grpc_calls.py kinds ADDR AUTHORITY      every kind of call, through hawser
    grpc_calls.py deadline ADDR AUTHORITY   calls with deadlines
    grpc_calls.py cancel ADDR AUTHORITY     a slow call, cancelled by the client after 300 ms
    grpc_calls.py unary ADDR AUTHORITY MSG  one unary call: {"code", "value" | "details"}
    grpc_calls.py method ADDR AUTHORITY NAME MSG   the same to /hawser.test.Echo/NAME
    grpc_calls.py tls_unary ADDR AUTHORITY MSG CA_PEM   the same over TLS (h2), trusting CA_PEM
"""
import json
import queue
import sys
import time
from concurrent import futures

import grpc


def ident(b):
    return b


def channel(addr, authority, ca=None):
    options = [
        ("grpc.default_authority", authority),
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_receive_message_length", 8 << 20),
        ("grpc.max_send_message_length", 8 << 20),
    ]
    if ca is not None:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        # The name to verify and to send as SNI: the authority, not the address dialled.
        options.append(("grpc.ssl_target_name_override", authority))
        return grpc.secure_channel(addr, credentials, options=options)
    return grpc.insecure_channel(addr, options=options)


def methods(ch):
    def m(kind, name):
        return getattr(ch, kind)("/hawser.test.Echo/" + name, request_serializer=ident, response_deserializer=ident)

    return {
        "unary": m("unary_unary", "Unary"),
        "server_stream": m("unary_stream", "ServerStream"),
        "client_stream": m("stream_unary", "ClientStream"),
        "bidi": m("stream_stream", "Bidi"),
    }


def outcome(fn):
    try:
        value = fn()
        return {"code": "OK", "value": value.decode("utf-8", "replace") if isinstance(value, bytes) else value}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def kinds(m):
    out = {}
    out["unary"] = m["unary"](b"hello", timeout=10).decode()
    out["names"] = sorted({m["unary"](b"name", timeout=10).decode() for _ in range(20)})
    out["server_stream"] = [x.decode() for x in m["server_stream"](b"5,20", timeout=10)]
    # Each message is passed on as it comes: the first of three sent 1 s apart arrives at once.
    start = time.monotonic()
    stream = m["server_stream"](b"3,1000", timeout=10)
    next(stream)
    out["stream_first_s"] = time.monotonic() - start
    out["stream_rest"] = len(list(stream))
    out["stream_all_s"] = time.monotonic() - start
    out["client_stream"] = m["client_stream"](iter([b"x" * i for i in range(1, 101)]), timeout=10).decode()
    # Bidi, in lock step: a message is sent only once the previous one came back, so nothing
    # on the way may wait for more of the stream.
    q = queue.Queue()

    def requests():
        while True:
            item = q.get()
            if item is None:
                return
            yield item

    responses = m["bidi"](requests(), timeout=60)
    echoed = 0
    for i in range(1000):
        q.put(str(i).encode())
        if next(responses) == str(i).encode():
            echoed += 1
    q.put(None)
    out["bidi_lockstep"] = echoed
    out["bidi_after_close"] = len(list(responses))
    # A large message each way (3 MiB, under gRPC's 4 MiB default): HTTP/2 flow control.
    big = bytes(range(256)) * (3 * 4096)
    out["big_roundtrip"] = m["unary"](big, timeout=30) == big
    # A status and message of the backend's reach the client as the backend sent them.
    out["backend_status"] = outcome(lambda: m["unary"]("status:5:not here, é".encode(), timeout=10))
    # Many calls at once share few connections (multiplexed).
    with futures.ThreadPoolExecutor(max_workers=64) as pool:
        calls = [pool.submit(lambda i=i: m["unary"](b"c%d" % i, timeout=20) == b"c%d" % i) for i in range(600)]
        out["concurrent_ok"] = sum(1 for c in calls if c.result())
    return out


def deadline(m):
    return {
        # A deadline longer than hawser's read_timeout (1 s in the test): the call's own wins.
        "long": outcome(lambda: m["unary"](b"sleep:2000", timeout=10)),
        # A short one: the client gives up at its deadline.
        "short": outcome(lambda: m["unary"](b"sleep:5000", timeout=0.5)),
        # A streaming call that outlives read_timeout between two messages.
        "stream": outcome(lambda: [x.decode() for x in m["server_stream"](b"2,1500", timeout=10)]),
    }


def main():
    cmd, addr, authority = sys.argv[1], sys.argv[2], sys.argv[3]
    ca = sys.argv[5] if cmd == "tls_unary" else None
    with channel(addr, authority, ca) as ch:
        m = methods(ch)
        if cmd == "kinds":
            out = kinds(m)
        elif cmd == "deadline":
            out = deadline(m)
        elif cmd == "cancel":
            call = m["unary"].future(b"sleep:3000")
            time.sleep(0.3)
            out = {"cancelled": call.cancel()}
        elif cmd == "method":
            method = ch.unary_unary("/hawser.test.Echo/" + sys.argv[4], request_serializer=ident, response_deserializer=ident)
            out = outcome(lambda: method(sys.argv[5].encode(), timeout=10))
        elif cmd in ("unary", "tls_unary"):
            out = outcome(lambda: m["unary"](sys.argv[4].encode(), timeout=10))
        else:
            raise SystemExit("unknown command " + cmd)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
