"""A WebSocket echo server and checking clients on Python's `websockets`, for tests/websocket.rs.

    websocket.py serve               echo server on 127.0.0.1, a port of its own; prints the port
    websocket.py client ADDR HOST N  connects to ws://HOST/echo over a TCP connection to ADDR
                                     (hawser), checks N echoes in order, ping/pong, then prints
                                     "open" and waits for a line on stdin before asking the
                                     server to close; prints "closed CODE REASON" and exits 0.
    websocket.py drive ADDR HOST     many connections to ws://HOST/ws through ADDR, driven by
                                     commands on stdin, one answer line each on stdout:
        open ID          -> "opened ID BACKEND" (the 101's X-Backend), after one echo
        echo ID TEXT     -> "echoed ID TEXT", or "failed ID WHY"
        close ID         -> "closed ID" once the close handshake is done
        wait_end ID SECS -> "ended ID received=CODE|none sent=CODE|none cause=EXC|none" (the
                            close frames received and sent, none received: the connection
                            just ended; the error under it, e.g. ConnectionResetError),
                            or "open ID" if it is still open after SECS

The client exits non-zero with the reason on stderr at the first thing that is not as expected.
"""

import contextlib
import socket
import sys

from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import connect
from websockets.sync.server import serve

# Asks the echo server to end the connection itself, with 1000 "bye".
CLOSE_ME = "close me"


def echo(ws):
    for message in ws:
        if message == CLOSE_ME:
            ws.close(1000, "bye")
            return
        ws.send(message)


def run_server():
    with serve(echo, "127.0.0.1", 0) as server:
        print(server.socket.getsockname()[1], flush=True)
        server.serve_forever()


def message(i):
    """Message i: text and binary in turn, of varied lengths, each naming its number."""
    if i % 2:
        return f"text {i} " + "x" * (i % 300)
    return i.to_bytes(4, "big") + bytes(range(256)) * (i % 5)


def open_connection(addr, host):
    ip, port = addr.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=5)
    return connect(f"ws://{host}/echo", sock=sock, open_timeout=5, close_timeout=5)


def fail(why):
    print(why, file=sys.stderr, flush=True)
    sys.exit(1)


def echo_in_order(ws, first, count, window=100):
    """Sends `window` messages before reading their echoes, so frames queue in both directions."""
    i = first
    while i < count:
        batch = [message(j) for j in range(i, min(i + window, count))]
        for m in batch:
            ws.send(m)
        for j, m in enumerate(batch):
            got = ws.recv(timeout=5)
            if got != m:
                fail(f"echo {i + j}: sent {m[:40]!r} ({type(m).__name__}), got {got[:40]!r} ({type(got).__name__})")
        i += len(batch)


def run_client(addr, host, count):
    with open_connection(addr, host) as ws:
        # The first echo right after the 101: pingora 0.9 ends some tunnels there
        # (cloudflare/pingora#946; 26 of 800 in tests/streams.rs) unless hawser holds the backend's answer back
        # (src/upstream/hold.rs); a tunnel that ends now fails the test.
        echo_in_order(ws, 0, 1)
        check_then_close(ws, count)


def check_then_close(ws, count):
    echo_in_order(ws, 1, count)
    big = bytes(range(256)) * 2048  # 512 KiB: many TCP segments, one message
    ws.send(big)
    if ws.recv(timeout=5) != big:
        fail("the 512 KiB message came back different")
    if not ws.ping(b"are you there").wait(5):
        fail("no pong within 5 s")
    print("open", flush=True)
    sys.stdin.readline()
    ws.send(CLOSE_ME)
    try:
        got = ws.recv(timeout=5)
        fail(f"expected the server's close, got a message {got!r}")
    except ConnectionClosedOK as e:
        if e.rcvd is None:
            fail("the connection closed without the server's close frame")
        print(f"closed {e.rcvd.code} {e.rcvd.reason}", flush=True)
    except ConnectionClosed as e:
        fail(f"the close handshake did not complete: {e}")


def open_ws(stack, addr, host):
    """A connection to /ws that echoed once (no tunnel may end right after its 101: see
    run_client). Entered on `stack`: websockets wants its connections used as context managers."""
    ws = stack.enter_context(connect_sock(addr, host, "/ws"))
    ws.send("probe")
    if ws.recv(timeout=5) != "probe":
        fail("the probe came back different")
    return ws


def connect_sock(addr, host, path):
    ip, port = addr.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=5)
    return connect(f"ws://{host}{path}", sock=sock, open_timeout=5, close_timeout=5)


def frame(close):
    return "none" if close is None else str(close.code)


def run_driver(addr, host):
    with contextlib.ExitStack() as stack:
        drive(stack, addr, host)


def drive(stack, addr, host):
    conns = {}
    for line in sys.stdin:
        cmd, _, rest = line.rstrip("\n").partition(" ")
        cid, _, arg = rest.partition(" ")
        if cmd == "open":
            ws = open_ws(stack, addr, host)
            conns[cid] = ws
            print(f"opened {cid} {ws.response.headers.get('X-Backend', '<no X-Backend>')}", flush=True)
        elif cmd == "echo":
            try:
                conns[cid].send(arg)
                got = conns[cid].recv(timeout=5)
                print(f"echoed {cid} {got}" if got == arg else f"failed {cid} got {got!r}", flush=True)
            except Exception as e:  # noqa: BLE001 - the test reads what happened
                print(f"failed {cid} {type(e).__name__}: {e}", flush=True)
        elif cmd == "close":
            conns[cid].close(1000, "done")
            print(f"closed {cid}", flush=True)
        elif cmd == "wait_end":
            try:
                got = conns[cid].recv(timeout=float(arg))
                print(f"failed {cid} an unexpected message {got!r}", flush=True)
            except TimeoutError:
                print(f"open {cid}", flush=True)
            except ConnectionClosed as e:
                cause = type(e.__cause__).__name__ if e.__cause__ else "none"
                print(f"ended {cid} received={frame(e.rcvd)} sent={frame(e.sent)} cause={cause}", flush=True)
        else:
            fail(f"unknown command {line!r}")


def main():
    if sys.argv[1:2] == ["serve"]:
        run_server()
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 5:
        run_client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["drive"] and len(sys.argv) == 4:
        run_driver(sys.argv[2], sys.argv[3])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
