"""Running the sandbox: ``serve()`` in this process, ``SandboxProcess`` in a child process, ``SandboxAdmin``.

python -m batch.sandbox.server --dsn postgresql://... --port 8765 [--next-style alternate]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn

from batch.logs import owns_stdlib_logging
from batch.sandbox.app import NextStyle, create_app

DSN_ENV = "INVESTSUITE_SANDBOX_DSN"


def serve(dsn: str, host: str = "127.0.0.1", port: int = 8765, **app_options: Any) -> None:
    """Serve the sandbox until interrupted (one uvicorn process, warnings only, no access log).

    Under ``batch`` (logging configured by ``batch.logs``) uvicorn keeps the job's log format."""
    app = create_app(dsn, **app_options)
    log_config = None if owns_stdlib_logging() else uvicorn.config.LOGGING_CONFIG
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", log_config=log_config)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxAdmin:
    """The sandbox's admin endpoints (``/_sandbox/*``, no auth) over HTTP."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        response = httpx.request(method, self.base_url + path, json=payload, timeout=self._timeout)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Replace the fault settings (keys left out are off); ``set_faults()`` clears every fault."""
        result: dict[str, Any] = self._call("PUT", "/_sandbox/faults", settings)
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_sandbox/faults")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        return result

    def reset_stats(self) -> None:
        self._call("POST", "/_sandbox/stats/reset")

    def writes(self, route: str | None = None) -> list[dict[str, Any]]:
        """The write requests the sandbox received (raw bodies), oldest first; ``route`` filters by substring."""
        query = f"?{urlencode({'route': route})}" if route else ""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/writes" + query)
        return result

    def expire_tokens(self) -> int:
        expired: int = self._call("POST", "/_sandbox/expire-tokens")["expired"]
        return expired

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/_sandbox/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


class SandboxProcess:
    """The sandbox in a child process (``python -m batch.sandbox.server``), stopped on exit.

    Options are ``create_app`` keyword arguments that the command line carries: ``next_style``,
    ``token_ttl_seconds``, ``access_key_id``, ``secret_access_key``, ``pool_size``, ``bus``, ``bus_url``.
    """

    def __init__(
        self, sandbox_dsn: str, port: int | None = None, *, startup_timeout: float = 30.0, **options: Any
    ) -> None:
        self.dsn = sandbox_dsn
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin = SandboxAdmin(self.base_url)
        self._options = options
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "batch.sandbox.server", "--port", str(self.port)]
        for name, value in self._options.items():
            flag = "--" + name.replace("_", "-")
            if flag not in _OPTION_FLAGS:
                raise TypeError(f"SandboxProcess does not know the option {name!r}")
            command += [flag, str(value)]
        return command

    def start(self) -> SandboxProcess:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[DSN_ENV] = self.dsn
        self._process = subprocess.Popen(self._command(), env=env)
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the sandbox exited during start-up with code {self._process.returncode}")
            if self.admin.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the sandbox did not answer on {self.base_url} within {self._startup_timeout} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def kill(self) -> None:
        """Kill -9 the server (crash tests); ``start()`` brings it back on the same port."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_OPTION_FLAGS = frozenset(
    {
        "--next-style",
        "--token-ttl-seconds",
        "--access-key-id",
        "--secret-access-key",
        "--pool-size",
        "--bus",
        "--bus-url",
    }
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the InvestSuite-compatible sandbox (never in production).")
    parser.add_argument("--dsn", default=None, help=f"PostgreSQL DSN of the sandbox database (or ${DSN_ENV})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--next-style", choices=["relative", "absolute", "alternate"], default="alternate")
    parser.add_argument("--token-ttl-seconds", type=float, default=300.0)
    parser.add_argument("--access-key-id", default=None)
    parser.add_argument("--secret-access-key", default=None)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--bus", help="publish InvestSuite's events: rabbitmq|mqtt|nats or a JSON [bus] object")
    parser.add_argument("--bus-url", help="the bus to publish to (default: the bus's local default)")
    args = parser.parse_args(argv)
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        parser.error(f"give --dsn or set {DSN_ENV}")
    next_style: NextStyle = args.next_style
    options: dict[str, Any] = {
        "next_style": next_style,
        "token_ttl_seconds": args.token_ttl_seconds,
        "pool_size": args.pool_size,
        "bus": args.bus,
        "bus_url": args.bus_url,
    }
    if args.access_key_id:
        options["access_key_id"] = args.access_key_id
    if args.secret_access_key:
        options["secret_access_key"] = args.secret_access_key
    serve(dsn, host=args.host, port=args.port, **options)


if __name__ == "__main__":
    main()
