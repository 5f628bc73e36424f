"""The thread-local HTTP transport keeps httpx's error contract: not sent vs outcome unknown, stale keep-alive."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from batch.adapters.http_transport import ThreadLocalTransport

Handler = Callable[[socket.socket, bytes], bool]  # returns whether to keep the connection open


def _response(body: bytes, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += conn.recv(65536)
    return head


@contextmanager
def server(handler: Handler) -> Iterator[tuple[str, list[int]]]:
    """A raw HTTP server on 127.0.0.1; yields its base URL and a list counting accepted connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                head = _read_request(conn)
                if not head or not handler(conn, head):
                    return

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


@contextmanager
def client(base_url: str, read_timeout: float = 5.0) -> Iterator[httpx.Client]:
    timeout = httpx.Timeout(connect=2.0, read=read_timeout, write=2.0, pool=2.0)
    with httpx.Client(base_url=base_url, transport=ThreadLocalTransport(), timeout=timeout) as http:
        yield http


def test_keep_alive_reuses_one_connection_per_thread() -> None:
    """Consecutive requests of one thread share a keep-alive connection."""

    def ok(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(_response(b'{"ok": true}'))
        return True

    with server(ok) as (url, accepted), client(url) as http:
        for _ in range(5):
            assert http.post("/x", content=b'{"a": 1}').json() == {"ok": True}
    assert len(accepted) == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    """The server drops the idle connection (keep-alive timeout): the next write goes on a fresh one, not lost."""

    def answer_then_hang_up(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(_response(b"{}"))
        return False  # closes without saying "Connection: close"

    with server(answer_then_hang_up) as (url, accepted), client(url) as http:
        assert http.post("/x", content=b"{}").status_code == 200
        threading.Event().wait(0.1)  # let the FIN arrive
        assert http.post("/x", content=b"{}").status_code == 200
    assert len(accepted) == 2


def test_connection_refused_is_a_connect_error() -> None:
    """Nothing listening: ConnectError, i.e. provably not sent (the client may retry even a write)."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with client(f"http://127.0.0.1:{port}") as http, pytest.raises(httpx.ConnectError):
        http.post("/x", content=b"{}")


def test_hang_up_after_the_request_is_an_unknown_outcome_not_a_connect_error() -> None:
    """The server read the request and closed without answering: RemoteProtocolError (outcome unknown)."""

    def hang_up(_conn: socket.socket, _head: bytes) -> bool:
        return False

    with server(hang_up) as (url, _), client(url) as http, pytest.raises(httpx.RemoteProtocolError):
        http.post("/x", content=b"{}")


def test_a_slow_answer_is_a_read_timeout() -> None:
    """No answer within the read timeout: httpx.ReadTimeout (a transient error with an unknown outcome)."""
    release = threading.Event()

    def slow(conn: socket.socket, _head: bytes) -> bool:
        release.wait(5)
        return False

    with server(slow) as (url, _), client(url, read_timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.get("/x")
    release.set()


def test_gzip_bodies_are_decoded_and_headers_kept() -> None:
    """Content-Encoding is honoured by httpx's decoders; response headers (Retry-After) reach the client."""
    body = gzip.compress(b'{"big": "' + b"x" * 5000 + b'"}')

    def zipped(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(_response(body, "Content-Encoding: gzip", "Retry-After: 7"))
        return True

    with server(zipped) as (url, _), client(url) as http:
        response = http.get("/x")
    assert response.json()["big"] == "x" * 5000
    assert response.headers["Retry-After"] == "7"


def test_requests_carry_host_method_path_query_and_body() -> None:
    """What the server receives is the request httpx built (Host, method, path with query, body length)."""
    seen: list[bytes] = []

    def record(conn: socket.socket, head: bytes) -> bool:
        seen.append(head)
        conn.sendall(_response(b"{}"))
        return True

    with server(record) as (url, _), client(url) as http:
        http.patch("/portfolios/p%201/", params={"a": "b c"}, content=b'{"x": 1}', headers={"Authorization": "t"})
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "PATCH /portfolios/p%201/?a=b+c HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["host"] == url.removeprefix("http://")
    assert headers["content-length"] == "8"
    assert headers["authorization"] == "t"


def test_close_closes_every_threads_connection() -> None:
    """Closing the transport closes the connections other threads opened; a later request is refused."""

    def ok(conn: socket.socket, _head: bytes) -> bool:
        conn.sendall(_response(b"{}"))
        return True

    with server(ok) as (url, accepted):
        transport = ThreadLocalTransport()
        http = httpx.Client(base_url=url, transport=transport)
        threads = [threading.Thread(target=lambda: http.get("/x")) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(accepted) == 3
        http.close()
        with pytest.raises(httpx.ConnectError):
            transport.handle_request(httpx.Request("GET", url + "/x"))
