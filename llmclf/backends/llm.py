"""LLM backend: any litellm model, schema-validated through instructor, cached, retried, costed.

Specs: ``llm:local`` (the embedded Gemma server), ``llm:openai/gpt-4o-mini``,
``llm:ollama/llama3.1``, ``llm:openai/NAME?api_base=http://host:port/v1`` for any
OpenAI-compatible server. Options can also be given as keyword arguments of `LLMConfig`.

Example:
    >>> from llmclf import Classifier, Task                     # doctest: +SKIP
    >>> clf = Classifier(Task.from_yaml("eval_sets/sst2/task.yaml"), backend="llm:local")
    >>> clf.predict("I loved it").label                            # doctest: +SKIP
    'positive'
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from llmclf.backends import vllm_outputs as vllm
from llmclf.backends.base import Backend, Capabilities, Hints
from llmclf.calibration import Calibration, CalibrationWarning, find_calibration, load_calibration
from llmclf.decision import decide
from llmclf.errors import (
    AuthError,
    BackendError,
    ConfigError,
    LocalServerError,
    OutputValidationError,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    RateLimitError,
)
from llmclf.hooks import Event
from llmclf.prompts import PromptTemplate
from llmclf.redaction import SECRET_OPTION, redact
from llmclf.shortlist import Shortlist, Shortlister
from llmclf.store import Store, open_store
from llmclf.types import ABSTAIN, Example, Prediction, Task, Usage

log = logging.getLogger("llmclf.llm")

# litellm would fetch its price table from the internet at import; use the copy it ships.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# instructor logs every failed attempt at ERROR; we raise one typed error instead
logging.getLogger("instructor").setLevel(logging.CRITICAL)

#: The placeholder key sent to servers that want none (the OpenAI SDK insists on one).
NO_KEY = "sk-no-key-required"

#: How the answer schema is sent: ``json_schema`` (OpenAI's ``response_format``; for a
#: ``hosted_vllm/`` model, vLLM's ``structured_outputs`` instead), ``json_object_schema``
#: (llama.cpp's ``response_format`` with a schema), ``structured_outputs`` (vLLM's field, for
#: any OpenAI-compatible vLLM server, `llmclf.backends.vllm_outputs`), or ``none`` (the
#: prompt only).
ResponseFormat = Literal["json_schema", "json_object_schema", "structured_outputs", "none"]


@dataclass(frozen=True)
class LLMConfig:
    """How to reach and ask the model. ``api_key`` is never logged, cached or stored.

    ``shortlist``: a student backend spec (``setfit:DIR``) whose top ``shortlist_k`` labels are
    the only labels in the prompt, the output schema and the dynamic examples (see
    `llmclf.shortlist`); ``shortlist_other``: add an escape candidate, answered with the
    student's top label.
    """

    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    prompt: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    max_reasks: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    concurrency: int = 4
    logprobs: bool = True
    top_logprobs: int = 20
    votes: int = 5
    vote_temperature: float = 0.8
    response_format: ResponseFormat = "json_schema"
    cache: bool = True
    few_shot_pool: str | None = None
    shots: int = 4
    shortlist: str | None = None
    shortlist_k: int = 5
    shortlist_other: bool = False
    #: ``auto`` (apply the calibrator stored for this backend, prompt and task, if any),
    #: ``off``, or the path of a calibration JSON file (`llmclf.calibration`).
    calibration: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, model: str, options: Mapping[str, Any]) -> LLMConfig:
        """Build from options (a spec's query string, or keyword arguments), each converted to
        its field's declared type: ``max_tokens=64`` is the integer 64, ``logprobs=false`` is
        False. An unknown option, or a value its type does not take, is a `ConfigError`.

        Example:
            >>> LLMConfig.from_options("openai/x", {"max_tokens": "64"}).max_tokens
            64
            >>> LLMConfig.from_options("openai/x", {"max_tokens": "lots"})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            llmclf.errors.ConfigError: LLM option max_tokens='lots': expected int | None (...)
        """
        adapters = _option_adapters()
        kwargs: dict[str, Any] = {"model": model}
        for key, value in options.items():
            if key not in adapters:
                raise ConfigError(f"unknown LLM option {key!r}; known: {sorted(adapters)}")
            type_name, adapter = adapters[key]
            try:
                kwargs[key] = adapter.validate_python(value)
            except ValidationError as exc:
                shown = "'***'" if SECRET_OPTION.search(key) else repr(value)
                reason = "; ".join(e["msg"] for e in exc.errors(include_url=False)[:2])
                raise ConfigError(
                    f"LLM option {key}={shown}: expected {type_name} ({reason})"
                ) from None
        return cls(**kwargs)


@functools.cache
def _option_adapters() -> dict[str, tuple[str, TypeAdapter[Any]]]:
    """``{option: (its declared type as written, a pydantic adapter for it)}`` for every
    `LLMConfig` field a user may set (all but ``model`` and ``extra``)."""
    hints = get_type_hints(LLMConfig)
    return {
        f.name: (str(f.type), TypeAdapter(hints[f.name]))
        for f in fields(LLMConfig)
        if f.name not in {"model", "extra"}
    }


def answer_model(task: Task) -> type[BaseModel]:
    """The pydantic model the answer must validate against: a Literal of the label names."""
    names = list(task.label_names) + ([ABSTAIN] if task.allow_abstain else [])
    choice = Literal[tuple(names)]  # type: ignore[valid-type]
    cfg = ConfigDict(extra="forbid")
    if task.is_multilabel:
        model = create_model(
            "MultiLabelAnswer",
            __config__=cfg,
            labels=(list[choice], Field(max_length=len(names))),  # type: ignore[valid-type]
        )
    else:
        model = create_model("Answer", __config__=cfg, label=(choice, ...))  # type: ignore[arg-type]
    return model


def _retry_after(exc: BaseException) -> float | None:
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        resp = getattr(exc, "response", None)
        headers = getattr(resp, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


#: What client libraries say when they find no API key (litellm wraps it in a 500).
_MISSING_KEY_SIGNS = ("Missing credentials", "api_key client option must be set")
#: `litellm.validate_environment` also lists settings that are not secrets (``OLLAMA_API_BASE``,
#: ``AZURE_API_VERSION``, AWS/Vertex credentials that may come from elsewhere): only an API key
#: or token variable that is missing means no request can succeed.
_KEY_VARIABLE = re.compile(r"_API_(KEY|TOKEN)$")


def missing_api_key_variables(config: LLMConfig) -> list[str]:
    """The environment variables one of which must be set before ``config.model`` can answer,
    or [] when the key is given (``api_key``) or not needed. Uses
    `litellm.validate_environment`, which looks at the environment only (no request).

    Example:
        >>> missing_api_key_variables(LLMConfig("openai/gpt-4o-mini"))   # doctest: +SKIP
        ['OPENAI_API_KEY']
    """
    if config.api_key:
        return []
    import litellm

    try:
        found = litellm.validate_environment(model=config.model, api_base=config.api_base)
    except Exception:  # an unknown provider: let the call say what is wrong
        return []
    return [k for k in found.get("missing_keys") or () if _KEY_VARIABLE.search(k)]


def classify_provider_error(
    exc: BaseException,
    backend: str,
    secrets: Sequence[str | None] = (),
    *,
    auth_hint: Callable[[], str] | None = None,
) -> tuple[ProviderError, bool]:
    """Map a litellm/openai exception to (our typed error, whether retrying can help).

    ``secrets`` (the API key) are removed from the message: some providers quote the key.
    A missing or refused key is an `AuthError`, never retried; ``auth_hint()`` (what to check,
    e.g. ``check OPENAI_API_KEY``) is appended to its message."""
    import litellm

    status = getattr(exc, "status_code", None)
    msg = f"{type(exc).__name__}: {redact(str(exc), secrets)[:500]}"
    # litellm reports some providers' 403 as a plain APIError carrying the status
    is_auth = isinstance(
        exc, litellm.AuthenticationError | litellm.PermissionDeniedError
    ) or status in (401, 403)
    # a client library that finds no key says so; litellm reports that as a 500
    if is_auth or any(sign in str(exc) for sign in _MISSING_KEY_SIGNS):
        hint = f" ({auth_hint()})" if auth_hint is not None else ""
        return AuthError(msg + hint, backend=backend, status_code=status), False
    if isinstance(exc, litellm.RateLimitError):
        return RateLimitError(
            msg, backend=backend, status_code=429, retry_after=_retry_after(exc)
        ), True
    if isinstance(exc, litellm.Timeout):
        return ProviderTimeout(msg, backend=backend, status_code=status), True
    if isinstance(exc, litellm.BadRequestError | litellm.NotFoundError):
        # litellm reports some malformed provider answers as 400s; 4xx never helps to retry
        return ProviderError(msg, backend=backend, status_code=status), False
    if isinstance(exc, litellm.APIConnectionError | litellm.InternalServerError):
        return ProviderServerError(msg, backend=backend, status_code=status), True
    if isinstance(exc, litellm.APIError | litellm.ServiceUnavailableError):
        return ProviderServerError(msg, backend=backend, status_code=status), True
    if isinstance(status, int) and status >= 500:
        return ProviderServerError(msg, backend=backend, status_code=status), True
    return ProviderServerError(msg, backend=backend, status_code=status), True


#: What `Event.PROVIDER_FAULT` reports: the ``kind`` label of ``llmclf_provider_faults_total``.
FAULT_KINDS = (
    "rate_limit",  # 429 (Retry-After honoured)
    "server_error",  # 5xx
    "timeout",  # no answer within timeout_s
    "connection",  # refused, or dropped mid-response
    "empty_response",  # 200 with no choices, or a choice without content
    "invalid_json",  # the answer is not JSON (re-asked)
    "label_outside_set",  # JSON, but a label the task does not have (re-asked)
    "invalid_output",  # JSON of the wrong shape (re-asked)
    "auth",  # 401/403
    "provider_error",  # another 4xx
)


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a refused or dropped connection, not a timeout."""
    import httpx
    import openai

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, httpx.TimeoutException | openai.APITimeoutError):
            return False
        if isinstance(cur, httpx.TransportError | openai.APIConnectionError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    # litellm reports a dropped connection as an InternalServerError("... Connection error.")
    return "Connection error" in str(exc)


def fault_kind(exc: BaseException, typed: ProviderError) -> str:
    """The `FAULT_KINDS` entry for one failed provider call (finer than ``typed.kind``).

    Example:
        >>> fault_kind(ValueError("x"), RateLimitError("slow down"))
        'rate_limit'
    """
    if isinstance(typed, ProviderServerError):
        if typed.status_code == 200:
            return "empty_response"
        if _is_connection_error(exc):
            return "connection"
    return typed.kind


def parse_fault_kind(exc: BaseException) -> str:
    """The `FAULT_KINDS` entry for an answer that failed validation (and is re-asked)."""
    errors: Any = getattr(exc, "errors", None)
    types: set[str] = set()
    if callable(errors):
        try:
            types = {str(e.get("type")) for e in errors()}
        except Exception:
            types = set()
    if "json_invalid" in types or isinstance(exc, json.JSONDecodeError):
        return "invalid_json"
    if types & {"literal_error", "enum"}:
        return "label_outside_set"
    return "invalid_output"


@dataclass
class _Choice:
    logprobs: Any


@dataclass
class _Completion:
    """The part of a chat completion `LLMBackend._logprob_scores` reads, from a JSON body."""

    choices: list[_Choice]


class _Captured(Exception):
    """Raised by `LLMBackend._completion` after capturing a request instead of sending it."""


@dataclass
class _CallLog:
    """What one classification spent across its provider calls, retries and re-asks."""

    usage: Usage = field(default_factory=Usage)
    calls: int = 0


class LLMBackend(Backend):
    """Classifies with a prompted LLM through litellm, validated by instructor."""

    #: Emits `Event.PROVIDER_FAULT` with a `FAULT_KINDS` entry for every provider fault seen,
    #: retried or not, and for every answer re-asked because it failed validation (the service
    #: counts them in /metrics).
    capabilities: ClassVar[Capabilities] = Capabilities(prompted=True)

    def __init__(
        self,
        task: Task,
        config: LLMConfig,
        *,
        name: str | None = None,
        store: Store | None = None,
        base_url_provider: Callable[[], str] | None = None,
        on_connection_failure: Callable[[], bool] | None = None,
        shortlister: Shortlister | None = None,
    ) -> None:
        self.task = task
        self.config = config
        self.name = name or f"llm:{config.model}"
        self.template = PromptTemplate.load(config.prompt or task.prompt)
        self.answer_model = answer_model(task)
        #: Where the candidate labels come from (None: every label, every time).
        self.shortlister = shortlister
        self._answer_models: dict[tuple[str, ...], type[BaseModel]] = {
            task.label_names: self.answer_model
        }
        self._store = store
        self._base_url_provider = base_url_provider
        self._on_connection_failure = on_connection_failure
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency))
        self._selector: Any = None
        self._selector_lock = threading.Lock()
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._key_checked = base_url_provider is not None  # the embedded server needs no key
        #: the schema goes in vLLM's ``structured_outputs`` field, not in ``response_format``
        self._structured_outputs = config.response_format == "structured_outputs" or (
            config.response_format == "json_schema" and vllm.is_vllm(config.model)
        )
        self.calibration = self._load_calibration()

    def _load_calibration(self) -> Calibration | None:
        """The calibrator this backend applies (``config.calibration``), or None."""
        choice = self.config.calibration
        if choice == "off":
            return None
        if choice == "auto":
            return find_calibration(self.name, self.template.id, self.task)
        cal = load_calibration(choice)
        why = cal.mismatch(self.name, self.template.id, self.task)
        if why is not None:
            warnings.warn(
                f"calibrator {choice} is not applied: {why}; answering uncalibrated",
                CalibrationWarning,
                stacklevel=3,
            )
            return None
        return cal

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store()
        return self._store

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.shortlister is not None:
            self.shortlister.close()

    def children(self) -> Sequence[Backend]:
        """The shortlist's student, when there is one."""
        return () if self.shortlister is None else (self.shortlister.student,)

    def with_shortlist(self, shortlister: Shortlister) -> LLMBackend:
        """A copy of this backend (same config, store and server) that asks among the
        candidates ``shortlister`` gives (a router's ``shortlist`` stage uses it).

        Example:
            >>> llm.with_shortlist(Shortlister(student, task, k=5))         # doctest: +SKIP
        """
        return LLMBackend(
            self.task,
            self.config,
            name=self.name,
            store=self._store,
            base_url_provider=self._base_url_provider,
            on_connection_failure=self._on_connection_failure,
            shortlister=shortlister,
        )

    def _answer_model_for(self, task: Task) -> type[BaseModel]:
        key = task.label_names
        with self._selector_lock:
            model = self._answer_models.get(key)
            if model is None:
                if len(self._answer_models) > 4096:
                    self._answer_models = {self.task.label_names: self.answer_model}
                model = self._answer_models[key] = answer_model(task)
        return model

    def warm_up(self) -> None:
        """Import litellm and instructor now (seconds), not on the first request."""
        self._instructor()

    def _instructor(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import instructor
                import litellm

                litellm.suppress_debug_info = True

                self._client = instructor.from_litellm(
                    self._completion, mode=instructor.Mode.JSON_SCHEMA
                )
                # every answer that fails validation (and is re-asked) is a fault too
                self._client.on("parse:error", self._parse_fault)
            return self._client

    def _parse_fault(self, error: Exception, **_: Any) -> None:
        self.hooks.emit(Event.PROVIDER_FAULT, parse_fault_kind(error))

    def _examples_for(self, text: str, task: Task | None = None) -> list[Example]:
        """Static examples, then the pool's nearest ones, all from ``task``'s labels (a
        shortlist's task: only examples of the candidates)."""
        if not self.template.spec.few_shot:
            return []
        task = task or self.task
        shots = list(task.examples)
        if self.config.few_shot_pool:
            with self._selector_lock:
                if self._selector is None:
                    from llmclf.fewshot import ExampleSelector

                    self._selector = ExampleSelector.from_file(self.config.few_shot_pool, self.task)
            only = None if task is self.task else task.label_names
            shots += self._selector.select(text, self.config.shots, labels=only)
        return shots

    def _params(
        self, temperature: float, seed: int | None, task: Task | None = None
    ) -> dict[str, Any]:
        task = task or self.task
        max_tokens = self.config.max_tokens or (
            16 + 12 * len(task.labels) if task.is_multilabel else 48
        )
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": min(max_tokens, 512)}
        if seed is not None:
            params["seed"] = seed
        if self.config.logprobs and temperature == 0.0:
            params["logprobs"] = True
            params["top_logprobs"] = self.config.top_logprobs
        params.update(self.config.extra)
        return params

    def cache_key(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        answer: type[BaseModel] | None = None,
    ) -> str:
        """The response cache's key: model, server, messages, answer schema, parameters."""
        blob = json.dumps(
            {
                "model": self.config.model,
                "api_base": None if self._base_url_provider else self.config.api_base,
                "messages": messages,
                "schema": (answer or self.answer_model).model_json_schema(),
                "params": params,
                "format": self.config.response_format,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    # -- the provider call (instructor calls this; retries provider faults with backoff) --------
    def _completion(
        self,
        *args: Any,
        _log: _CallLog | None = None,
        _prompt_len: int = 0,
        _capture: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        import litellm

        if self.config.api_key and len(kwargs.get("messages") or ()) > _prompt_len:
            # re-ask turns quote the model's last answer: never send (or let a client library
            # log) an API key that a provider echoed into it
            kwargs["messages"] = [
                {**m, "content": redact(m["content"], [self.config.api_key])}
                if i >= _prompt_len and isinstance(m.get("content"), str)
                else m
                for i, m in enumerate(kwargs["messages"])
            ]

        rf = kwargs.pop("response_format", None)
        choice = False  # vLLM answers with the bare label, rewritten below as JSON
        if rf and self._structured_outputs:
            # vLLM's own field, and no response_format: vLLM would make that a second constraint
            outputs = vllm.structured_outputs(rf.get("json_schema", {}).get("schema") or {})
            choice = "choice" in outputs
            extra_body = dict(kwargs.pop("extra_body", None) or {})
            extra_body["structured_outputs"] = outputs
            kwargs["extra_body"] = extra_body
        elif rf and self.config.response_format == "json_object_schema":
            schema = rf.get("json_schema", {}).get("schema")
            extra_body = dict(kwargs.pop("extra_body", None) or {})
            extra_body["response_format"] = {"type": "json_object", "schema": schema}
            kwargs["extra_body"] = extra_body
        elif rf and self.config.response_format == "json_schema":
            kwargs["response_format"] = rf
        if _capture is not None:  # `request_body`: what would be sent, not sent
            _capture.append(kwargs)
            raise _Captured
        attempt = 0
        while True:
            api_base = (
                self._base_url_provider() if self._base_url_provider else self.config.api_base
            )
            try:
                resp = litellm.completion(
                    *args,
                    api_base=api_base,
                    api_key=self.config.api_key,
                    timeout=self.config.timeout_s,
                    num_retries=0,
                    max_retries=0,
                    **kwargs,
                )
                if not getattr(resp, "choices", None):
                    raise ProviderServerError(
                        "provider returned no choices", backend=self.name, status_code=200
                    )
                content = resp.choices[0].message.content
                if content is None:
                    raise ProviderServerError(
                        "provider returned an empty message", backend=self.name, status_code=200
                    )
                if choice:
                    first = resp.choices[0]
                    first.message.content, first.logprobs = vllm.json_answer(
                        content, getattr(first, "logprobs", None)
                    )
                if _log is not None:
                    _log.calls += 1
                    _log.usage = _log.usage + self._usage_of(resp)
                return resp
            except ProviderError as err:
                typed, retryable, kind = err, True, fault_kind(err, err)
            except Exception as exc:  # litellm/openai/httpx errors
                typed, retryable = classify_provider_error(
                    exc, self.name, [self.config.api_key], auth_hint=self._key_hint
                )
                kind = fault_kind(exc, typed)
            self.hooks.emit(Event.PROVIDER_FAULT, kind)
            if (
                kind == "connection"
                and self._on_connection_failure is not None
                and not self._on_connection_failure()
            ):
                raise LocalServerError(
                    f"the embedded server died again after a restart: {typed}", backend=self.name
                ) from typed
            attempt += 1
            if not retryable or attempt > self.config.max_retries:
                typed.attempts = attempt
                raise typed
            if _log is not None:
                _log.usage = _log.usage + Usage(retries=1)
            delay = min(
                self.config.backoff_max_s,
                self.config.backoff_base_s * 2 ** (attempt - 1) * (0.5 + random.random()),
            )
            if isinstance(typed, RateLimitError) and typed.retry_after is not None:
                delay = min(self.config.backoff_max_s, max(typed.retry_after, 0.0))
            log.warning("%s: %s; retry %d in %.2fs", self.name, kind, attempt, delay)
            time.sleep(delay)

    def _check_api_key(self) -> None:
        """Raise `AuthError` before any request when the provider's API key is nowhere to be
        found: retrying cannot help, and the message names the variable to set."""
        if self._key_checked:
            return
        missing = missing_api_key_variables(self.config)
        if missing:
            self.hooks.emit(Event.PROVIDER_FAULT, "auth")
            raise AuthError(
                f"no API key for {self.config.model}: set {' or '.join(missing)} "
                "(or LLMCLF_API_KEY, or api_key= in the backend spec)",
                backend=self.name,
                attempts=0,
            )
        self._key_checked = True

    def _key_hint(self) -> str:
        """Where the key that was refused came from, so a user knows what to fix."""
        key = self.config.api_key
        if key == NO_KEY:
            return "the server wants an API key: set LLMCLF_API_KEY or api_key= in the spec"
        if key and key == os.environ.get("LLMCLF_API_KEY"):
            return "check LLMCLF_API_KEY"
        if key:
            return "check api_key= in the backend spec"
        try:
            import litellm

            provider = litellm.get_llm_provider(model=self.config.model)[1]
        except Exception:
            return "check the provider's API key variable"
        return f"check {provider.upper()}_API_KEY"

    def _usage_of(self, resp: Any) -> Usage:
        u = getattr(resp, "usage", None)
        cost: float | None = None
        if self._base_url_provider is not None:
            cost = 0.0  # the embedded model is free
        else:
            try:
                import litellm

                cost = float(litellm.completion_cost(completion_response=resp))
            except Exception:
                cost = None
        return Usage(
            prompt_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(u, "completion_tokens", 0) or 0),
            llm_calls=1,
            cost_usd=cost,
        )

    def _ask(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        call_log: _CallLog,
        schema: type[BaseModel] | None = None,
    ) -> tuple[BaseModel, Any]:
        """One validated answer (re-asked with the validation error up to ``max_reasks``)."""
        from instructor.core.exceptions import InstructorRetryException

        self._check_api_key()
        client = self._instructor()
        try:
            answer, completion = client.create_with_completion(
                model=self.config.model,
                messages=messages,
                response_model=schema or self.answer_model,
                max_retries=self.config.max_reasks,
                _log=call_log,
                _prompt_len=len(messages),
                **params,
            )
        except InstructorRetryException as exc:
            cause = exc.__cause__
            while cause is not None and not isinstance(cause, BackendError):
                if cause.__cause__ is None:
                    break
                cause = cause.__cause__
            if isinstance(cause, BackendError):
                raise cause from None
            raw = None
            last = getattr(exc, "last_completion", None)
            if last is not None and getattr(last, "choices", None):
                raw = last.choices[0].message.content
            last_error = exc.failed_attempts[-1].exception if exc.failed_attempts else exc
            secrets = [self.config.api_key]
            first_line = redact(str(last_error), secrets).strip().splitlines()[-2:]
            raise OutputValidationError(
                f"output did not match the label schema after {exc.n_attempts} attempts "
                f"({' '.join(first_line)[:300]})",
                raw_output=None if raw is None else redact(raw, secrets),
                backend=self.name,
            ) from None
        reasks = max(0, call_log.calls - 1)
        if reasks:
            call_log.usage = call_log.usage + Usage(retries=reasks)
        return answer, completion

    # -- scoring --------------------------------------------------------------------------------
    def _choices(self, task: Task | None = None) -> list[str]:
        task = task or self.task
        return list(task.label_names) + ([ABSTAIN] if task.allow_abstain else [])

    def _logprob_scores(self, completion: Any, task: Task | None = None) -> dict[str, float] | None:
        from llmclf.logprob_scores import label_scores_from_tokens

        lp = getattr(completion.choices[0], "logprobs", None)
        content = getattr(lp, "content", None) if lp is not None else None
        if content is None and isinstance(lp, dict):
            content = lp.get("content")
        if not content:
            return None
        tokens = []
        for item in content:
            get = item.get if isinstance(item, dict) else lambda k, _i=item: getattr(_i, k, None)
            tops = get("top_logprobs") or []
            alts = [
                (
                    t["token"] if isinstance(t, dict) else t.token,
                    float(t["logprob"] if isinstance(t, dict) else t.logprob),
                )
                for t in tops
            ]
            tokens.append((str(get("token")), alts))
        task = task or self.task
        return label_scores_from_tokens(tokens, self._choices(task), multilabel=task.is_multilabel)

    def _answer_labels(self, answer: BaseModel, task: Task | None = None) -> list[str]:
        if (task or self.task).is_multilabel:
            return list(dict.fromkeys(answer.labels))  # type: ignore[attr-defined]
        return [answer.label]  # type: ignore[attr-defined]

    # -- public ---------------------------------------------------------------------------------
    def classify(self, text: str) -> Prediction:
        """Classify one (already validated) text (among its shortlist, when there is one)."""
        if self.shortlister is not None:
            start = time.perf_counter()
            return self._classify_among(text, self.shortlister.shortlists([text])[0], start)
        return self._classify(text, self.task)

    def _classify_among(self, text: str, shortlist: Shortlist, start: float) -> Prediction:
        """Ask among ``shortlist``'s labels; the answer covers every label of the task."""
        assert self.shortlister is not None
        sub = self.shortlister.restrict(shortlist)
        answer = self._classify(text, sub, start)
        merged = self.shortlister.merge(shortlist, answer)
        return merged.model_copy(update={"latency_ms": (time.perf_counter() - start) * 1000})

    def _classify(self, text: str, task: Task, start: float | None = None) -> Prediction:
        """Ask the model with ``task``'s labels (the backend's task, or a shortlist's)."""
        start = time.perf_counter() if start is None else start
        answer_schema = self._answer_model_for(task)
        messages = self.template.render(task, text, self._examples_for(text, task))
        params = self._params(self.config.temperature, None, task)
        key = self.cache_key(messages, params, answer_schema)
        if self.config.cache:  # an unreachable store is a miss: the answer never waits on it
            hit = self.store.cache_lookup(key)
            if hit is not None:
                return self._prediction(hit, start, cached=True, task=task)
        call_log = _CallLog()
        answer, completion = self._ask(messages, params, call_log, answer_schema)
        chosen = self._answer_labels(answer, task)
        scores = self._logprob_scores(completion, task) if "logprobs" in params else None
        source = "logprobs"
        if scores is None:
            source = "votes"
            scores = self._vote_scores(messages, chosen, call_log, task)
        record = {
            "answer": chosen,
            "scores": scores,
            "source": source,
            "raw": completion.choices[0].message.content,
            "usage": call_log.usage.model_dump(),
        }
        if self.config.cache:
            self.store.cache_offer(key, self.config.model, record)
        return self._prediction(record, start, cached=False, task=task)

    # -- offline requests (provider Batch APIs) -------------------------------------------------
    def request_body(self, text: str) -> tuple[str, dict[str, Any]]:
        """``(cache key, request body)`` of the call `classify` would make for ``text``, built
        by the same code path but not sent: the rendered prompt, the label schema, logprob,
        temperature and token settings, as the provider's HTTP body (for a Batch API file).

        Example:
            >>> key, body = backend.request_body("I loved it")          # doctest: +SKIP
            >>> sorted(body)
            ['logprobs', 'max_tokens', 'messages', 'model', 'response_format', 'temperature', ...]
        """
        import litellm

        if self.shortlister is not None:
            raise ConfigError(
                f"{self.name}: a shortlist teacher asks each text among a student's labels, "
                "which a Batch API file cannot; label with --engine async or ray"
            )
        messages = self.template.render(self.task, text, self._examples_for(text))
        params = self._params(self.config.temperature, None)
        key = self.cache_key(messages, params)
        captured: list[dict[str, Any]] = []
        try:
            self._instructor().create_with_completion(
                model=self.config.model,
                messages=messages,
                response_model=self.answer_model,
                max_retries=1,
                _capture=captured,
                _prompt_len=len(messages),
                **params,
            )
        except Exception:
            if not captured:
                raise
        kwargs = dict(captured[0])
        try:
            wire_model = litellm.get_llm_provider(model=self.config.model)[0]
        except Exception:
            wire_model = self.config.model.split("/", 1)[-1]
        body: dict[str, Any] = {}
        extra_body = kwargs.pop("extra_body", None) or {}
        for k, v in kwargs.items():
            if k not in {"model", "stream"}:
                body[k] = v
        body.update(extra_body)  # what litellm merges into the HTTP body
        body["model"] = wire_model
        return key, body

    def prediction_from_response(self, text: str, response: Mapping[str, Any]) -> Prediction:
        """Validate a provider's answer to `request_body` (e.g. a Batch API result line's
        ``response.body``) exactly like an online answer, cache it under the same key, and
        return its `Prediction`. Usage is costed at the provider's batch price.

        Raises `OutputValidationError` (with the raw output) for an answer outside the label
        schema, and `ProviderServerError` for an answer with no content.
        """
        start = time.perf_counter()
        messages = self.template.render(self.task, text, self._examples_for(text))
        params = self._params(self.config.temperature, None)
        key = self.cache_key(messages, params)
        choices = response.get("choices") or []
        if not choices or not isinstance(choices[0], Mapping):
            raise ProviderServerError(
                "provider returned no choices", backend=self.name, status_code=200
            )
        content = (choices[0].get("message") or {}).get("content")
        if not isinstance(content, str):
            raise ProviderServerError(
                "provider returned an empty message", backend=self.name, status_code=200
            )
        said, lp = content, choices[0].get("logprobs")
        if self._structured_outputs and vllm.choices_of(self.answer_model.model_json_schema()):
            content, lp = vllm.json_answer(content, lp)  # a vLLM ``choice``: the bare label
        try:
            answer = self.answer_model.model_validate_json(content)
        except ValidationError as exc:
            reason = "; ".join(e["msg"] for e in exc.errors(include_url=False)[:2])
            raise OutputValidationError(
                f"output did not match the label schema ({reason})",
                raw_output=redact(said, [self.config.api_key]),
                backend=self.name,
            ) from None
        chosen = self._answer_labels(answer)
        scores = None
        if "logprobs" in params:
            scores = self._logprob_scores(_Completion([_Choice(lp)]))
        source = "logprobs"
        if scores is None:  # one answer, no logprobs: a single vote
            source = "votes"
            scores = {c: float(c in chosen) for c in self._choices()}
        u = response.get("usage") or {}
        prompt_tokens = int(u.get("prompt_tokens") or 0)
        completion_tokens = int(u.get("completion_tokens") or 0)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            llm_calls=1,
            cost_usd=self.batch_cost(prompt_tokens, completion_tokens),
        )
        record = {
            "answer": chosen,
            "scores": scores,
            "source": source,
            "raw": content,
            "usage": usage.model_dump(),
        }
        if self.config.cache:
            self.store.cache_put(key, self.config.model, record)
        return self._prediction(record, start, cached=False)

    def batch_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for tokens answered through the provider's Batch API: litellm's batch prices
        (``*_cost_per_token_batches``), else half the online price (what OpenAI-compatible
        providers charge for batches), else None when the model has no known price.

        Example:
            >>> b.batch_cost(1_000_000, 0)  # gpt-4o-mini: $0.15/M online  # doctest: +SKIP
            0.075
        """
        if self._base_url_provider is not None:
            return 0.0  # the embedded model is free
        try:
            import litellm

            info: Mapping[str, Any] = litellm.get_model_info(model=self.config.model)
        except Exception:
            return None
        inp = info.get("input_cost_per_token_batches")
        out = info.get("output_cost_per_token_batches")
        if inp is None or out is None:
            on_in, on_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
            if on_in is None or on_out is None:
                return None
            inp, out = float(on_in) / 2, float(on_out) / 2
        return float(inp) * prompt_tokens + float(out) * completion_tokens

    def _vote_scores(
        self,
        messages: list[dict[str, str]],
        first: list[str],
        call_log: _CallLog,
        task: Task | None = None,
    ) -> dict[str, float]:
        task = task or self.task
        answer_schema = self._answer_model_for(task)
        votes: Counter[str] = Counter(first)
        n = max(1, self.config.votes)
        for i in range(1, n):
            params = self._params(self.config.vote_temperature, seed=i, task=task)
            params.pop("logprobs", None)
            params.pop("top_logprobs", None)
            try:
                answer, _ = self._ask(messages, params, call_log, answer_schema)
            except OutputValidationError:
                continue
            votes.update(self._answer_labels(answer, task))
        return {c: votes.get(c, 0) / n for c in self._choices(task)}

    def _prediction(
        self, record: dict[str, Any], start: float, *, cached: bool, task: Task | None = None
    ) -> Prediction:
        """The answer from a (cached) record of raw scores: scores renormalised over the labels
        (single-label), calibrated when a calibrator fits, and labels that follow them."""
        task = task or self.task
        raw_scores: dict[str, float] = dict(record["scores"])
        abstain_score = raw_scores.pop(ABSTAIN, None) if task.allow_abstain else None
        answer: list[str] = list(record["answer"])
        scores = {lab: float(raw_scores.get(lab, 0.0)) for lab in task.label_names}
        if not task.is_multilabel:
            total = sum(scores.values())
            if total > 0:
                scores = {k: v / total for k, v in scores.items()}
            elif answer and answer[0] in scores:
                scores[answer[0]] = 1.0
        elif not any(scores.values()) and answer:
            # no usable scores: the answer's own labels are all we know
            scores = {k: float(k in answer) for k in scores}
        source: str = record["source"]
        threshold = None
        uncalibrated: dict[str, float] | None = None
        cal = self.calibration
        # a calibrator was fitted on the full label set; a shortlist's sub-task is left raw
        full_task = list(task.label_names) == list(self.task.label_names)
        if cal is not None and cal.score_source == source and full_task:
            uncalibrated = scores
            scores = cal.apply(scores)
            source = f"{source}+{cal.method}"
            threshold = cal.threshold
        # the label follows the scores, so the label, its confidence and any threshold agree
        # (greedy decoding, and a vote's first answer, can disagree at the margin)
        top_raw = max(float(raw_scores.get(k, 0.0)) for k in task.label_names)
        abstained = abstain_score is not None and abstain_score > top_raw
        decision = decide(task, scores, threshold=threshold)
        usage = Usage() if cached else Usage.model_validate(record["usage"])
        return Prediction(
            labels=() if abstained else decision.labels,
            scores={k: round(v, 6) for k, v in scores.items()},
            score_source=source,
            backend=self.name,
            abstained=abstained,
            abstain_score=None if abstain_score is None else round(float(abstain_score), 6),
            route=(self.name,),
            latency_ms=(time.perf_counter() - start) * 1000,
            usage=usage,
            prompt_hash=self.template.id,
            cached=cached,
            raw_output=record.get("raw"),
            calibrated=uncalibrated is not None,
            raw_scores=None
            if uncalibrated is None
            else {k: round(v, 6) for k, v in uncalibrated.items()},
            threshold=None if abstained else decision.threshold,
        )

    def predict_batch(self, texts: Sequence[str], hints: Hints | None = None) -> list[Prediction]:
        if self.shortlister is not None:
            # one student batch for the candidates, then one LLM call per text among them
            t0 = time.perf_counter()
            lists = self.shortlister.shortlists(texts)
            student_s = time.perf_counter() - t0  # each answer's latency includes the student's

            def among(text: str, shortlist: Shortlist) -> Prediction:
                return self._classify_among(text, shortlist, time.perf_counter() - student_s)

            if len(texts) == 1:
                return [among(texts[0], lists[0])]
            return list(self._pool.map(among, texts, lists))
        if len(texts) == 1:
            return [self.classify(texts[0])]
        return list(self._pool.map(self.classify, texts))


#: Builds the shortlist's student from its spec: ``make_student(spec, task)``.
MakeStudent = Callable[[str, Task], Backend]


def _shortlister(
    config: LLMConfig, task: Task, make_student: MakeStudent | None
) -> Shortlister | None:
    """The `Shortlister` the ``shortlist*`` options ask for (None without ``shortlist``)."""
    if config.shortlist is None:
        return None
    if config.shortlist_k < 2:
        raise ConfigError(
            f"LLM option shortlist_k={config.shortlist_k}: at least 2 (the LLM needs a choice)"
        )
    if make_student is None:
        raise ConfigError("LLM option shortlist= needs a way to build its student backend")
    if config.shortlist.startswith("llm:"):
        raise ConfigError(
            f"LLM option shortlist={config.shortlist!r}: name a student (setfit:DIR), not an LLM"
        )
    student = make_student(config.shortlist, task)
    try:
        return Shortlister(
            student, task, k=config.shortlist_k, other=config.shortlist_other, owned=True
        )
    except BaseException:
        student.close()
        raise


def make_llm_backend(
    model: str,
    task: Task,
    options: dict[str, Any],
    *,
    store: Store | None = None,
    make_student: MakeStudent | None = None,
) -> LLMBackend:
    """Build an LLM backend from a spec's model part and options.

    ``make_student`` builds the student of a ``shortlist=SPEC`` option (the registry passes
    its own ``make_backend``: backends never import each other)."""
    if model == "local":
        from llmclf.backends.local_server import MODEL_ALIAS, LocalServer

        server = LocalServer.shared()
        opts = {"response_format": "json_object_schema", "top_logprobs": 50, "concurrency": 2}
        opts.update(options)
        config = LLMConfig.from_options(f"openai/{MODEL_ALIAS}", opts)
        config = replace(config, api_key=config.api_key or NO_KEY)
        return LLMBackend(
            task,
            config,
            name="llm:local",
            store=store,
            base_url_provider=server.ensure_running,
            on_connection_failure=server.mark_failed,
            shortlister=_shortlister(config, task, make_student),
        )
    config = LLMConfig.from_options(model, options)
    if config.api_key is None:
        key_env = os.environ.get("LLMCLF_API_KEY")
        if key_env:
            config = replace(config, api_key=key_env)
        elif (
            config.api_base and model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY")
        ):
            # a self-hosted OpenAI-compatible server usually wants no key, but the SDK wants one
            config = replace(config, api_key=NO_KEY)
        elif vllm.is_vllm(model) and not os.environ.get("HOSTED_VLLM_API_KEY"):
            # litellm's chat call to vLLM sends a placeholder itself, its Files/Batches calls
            # do not (the OpenAI SDK then refuses to send anything)
            config = replace(config, api_key=NO_KEY)
    return LLMBackend(
        task, config, name=f"llm:{model}", store=store,
        shortlister=_shortlister(config, task, make_student),
    )  # fmt: skip
