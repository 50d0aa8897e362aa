"""Tiny raw HTTP/1.1 upstreams for what no package provides: exact control of
framing and timing (an SSE stream held open, close-delimited bodies, a server
that never answers) and a record of the exact request bytes received.

Each runs in a thread of the test process on 127.0.0.1:<ephemeral>, and is
closed by the fixture that made it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def one(self, name: str) -> str | None:
        vals = self.all(name)
        assert len(vals) <= 1, f"{name} appears {len(vals)} times: {vals}"
        return vals[0] if vals else None


def read_request(conn: socket.socket, buf: bytearray) -> RawRequest | None:
    """Read one request (Content-Length or no body) from conn; None on EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    length = 0
    for k, v in headers:
        if k.lower() == "content-length":
            length = int(v)
        if k.lower() == "transfer-encoding":
            raise AssertionError("raw upstream expects Content-Length bodies")
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    del buf[:]
    buf += rest[length:]
    return RawRequest(method, target, headers, rest[:length])


Handler = Callable[[socket.socket, RawRequest], bool]
"""Answers one request on conn; returns True to keep the connection for more."""


@dataclass
class RawUpstream:
    handler: Handler
    idle_timeout: float = 30.0  # close a keep-alive connection idle this long
    port: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)  # so the accept loop sees `closed` promptly
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            with conn:
                conn.settimeout(self.idle_timeout)
                while not self.closed.is_set():
                    req = read_request(conn, buf)
                    if req is None:
                        return
                    self.requests.append(req)
                    if not self.handler(conn, req):
                        return
        except OSError:
            pass
        except BaseException as e:  # surfaced by the test
            self.errors.append(e)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def json_answer(body: bytes = b'{"ok":true}', extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )
