"""A real, throwaway PostgreSQL server for tests and benchmarks: Debian's ``postgresql`` binaries
run in a temporary directory on a free loopback port, as an unprivileged user.

Run as root, the server runs as the ``postgres`` user (created with ``useradd`` if missing);
otherwise as the current user. Host connections need the password (scram-sha-256), so URLs
carry a real one.

Example:
    >>> with TempPostgres() as pg:  # doctest: +SKIP
    ...     url = pg.create_database("t1")   # postgresql://llmclf:...@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["TempPostgres", "postgres_bin_dir"]

USER = "llmclf"


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are (``$LLMCLF_PG_BIN``, Debian's newest, or PATH)."""
    env = os.environ.get("LLMCLF_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "postgres").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """The unprivileged user to run as (None: the current user, who is not root)."""
    if os.getuid() != 0:
        return None
    for name in ("postgres", "llmclf-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "llmclf-pg"],
        check=True,
    )
    return "llmclf-pg"


class TempPostgres:
    """Start with ``with TempPostgres() as pg``; ``pg.url(db)``, ``pg.create_database(name)``."""

    def __init__(self) -> None:
        bindir = postgres_bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.password = secrets.token_hex(8)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="llmclf-pg-"))
        self.user = _server_user()

    def _run_as(self) -> dict[str, object]:
        if self.user is None:
            return {}
        pw = pwd.getpwnam(self.user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self) -> TempPostgres:
        data, sock = self.dir / "data", self.dir / "sock"
        sock.mkdir()
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            for p in (self.dir, sock, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
             "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
             f"--pwfile={pwfile}"],
            check=True, capture_output=True, env=env, cwd=self.dir, **self._run_as(),  # type: ignore[call-overload]
        )  # fmt: skip
        self.log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self._launch()
        return self

    def _launch(self) -> None:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
             "-k", str(self.dir / "sock"), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=200"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
            **self._run_as(),
        )  # fmt: skip
        self._wait_ready()

    def restart(self) -> None:
        """Stop the server (fast shutdown: every connection is cut) and start it again."""
        self._shutdown()
        self._launch()

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: every connection is cut), keeping its data directory
        and port for `start_server`: an outage, as clients see it."""
        self._shutdown()

    def start_server(self) -> None:
        """Start the server stopped by `stop_server` again, on the same data and port."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self._launch()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "postgres exited: " + (self.dir / "server.log").read_text(errors="replace")
                )
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A ``postgresql://`` URL of ``database`` (with the real password unless given)."""
        pw = self.password if password is None else password
        return f"postgresql://{USER}:{pw}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self._shutdown()
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
