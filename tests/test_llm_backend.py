"""The whole litellm → instructor → HTTP path against the fake provider on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

import llmclf
from llmclf import Classifier, Hints
from llmclf.backends.llm import LLMConfig, classify_provider_error, missing_api_key_variables
from llmclf.errors import (
    AuthError,
    ConfigError,
    InputTextError,
    OutputValidationError,
    ProviderServerError,
    ProviderTimeout,
    RateLimitError,
)
from llmclf.hooks import Event
from llmclf.store import open_store
from llmclf.testing.fake_provider import FakeProvider, Fault
from llmclf.types import Task

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


def test_binary_prediction_has_label_scores_usage_and_prompt_hash(fake, sentiment_task):
    clf = Classifier(sentiment_task, backend=fake.spec())
    pred = clf.predict("I loved this film")
    assert pred.label == "positive"
    assert pred.labels == ("positive",)
    assert pred.score_source == "logprobs"
    assert set(pred.scores) == {"negative", "positive"}
    assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert pred.scores["positive"] == pytest.approx(0.9, abs=0.01)
    assert pred.backend == "llm:openai/fake"
    assert pred.usage.llm_calls == 1 and pred.usage.prompt_tokens > 0
    assert pred.prompt_hash and pred.prompt_hash.startswith("zero_shot.v1@")
    assert pred.latency_ms > 0 and not pred.cached
    # the label schema was sent, so a provider can constrain decoding
    body = fake.chat_requests[-1]
    assert body["response_format"]["json_schema"]["schema"]["properties"]["label"]
    assert body["logprobs"] is True


def test_multiclass_and_multilabel(sentiment_task, topic_task, tags_task):
    with FakeProvider(rules={"match": "sports", "wow": ["joy", "surprise"]}) as fp:
        pred = Classifier(topic_task, backend=fp.spec()).predict("the match ended 2-1")
        assert pred.label == "sports"
        assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-4)
        multi = Classifier(tags_task, backend=fp.spec()).predict("wow, what a day")
        assert multi.labels == ("joy", "surprise")
        assert set(multi.scores) == {"joy", "anger", "surprise"}
        # multi-label scores are independent per label, not a distribution
        assert multi.scores["joy"] > 0.8 and multi.scores["surprise"] > 0.8
        assert multi.scores["anger"] < 0.5


def test_votes_when_the_provider_returns_no_logprobs(sentiment_task):
    with FakeProvider(rules={"good": "positive"}, default="negative", logprobs=False) as fp:
        pred = Classifier(sentiment_task, backend=fp.spec(votes=3)).predict("good stuff")
    assert pred.score_source == "votes"
    assert pred.label == "positive"
    assert pred.scores == {"negative": 0.0, "positive": 1.0}
    assert pred.usage.llm_calls == 3
    assert len(fp.chat_requests) == 3


def test_predict_many_keeps_order_and_apredict_many(fake, sentiment_task):
    texts = [f"text {i} " + ("good" if i % 3 == 0 else "bad") for i in range(20)]
    clf = Classifier(sentiment_task, backend=fake.spec(concurrency=4))
    preds = clf.predict_many(texts)
    assert [p.label for p in preds] == ["positive" if i % 3 == 0 else "negative" for i in range(20)]
    apreds = asyncio.run(clf.apredict_many(texts))
    assert [p.label for p in apreds] == [p.label for p in preds]
    assert all(p.cached for p in apreds)


def test_cache_second_identical_request_makes_no_call(fake, sentiment_task):
    clf = Classifier(sentiment_task, backend=fake.spec())
    first = clf.predict("good")
    n = len(fake.chat_requests)
    second = clf.predict("good")
    assert len(fake.chat_requests) == n
    assert second.cached and not first.cached
    assert second.scores == first.scores and second.label == first.label
    assert second.usage.llm_calls == 0
    # a different prompt is a different cache key
    Classifier(sentiment_task, backend=fake.spec(prompt="minimal")).predict("good")
    assert len(fake.chat_requests) == n + 1


def test_cache_is_safe_under_concurrent_use(fake, sentiment_task):
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            clf = Classifier(sentiment_task, backend=fake.spec())
            for j in range(10):
                clf.predict(f"good {j % 5}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = open_store()
    assert store.cache_count() == 5
    assert store.integrity_check() == "ok"


def test_invalid_output_is_reasked_with_the_error(fake, sentiment_task):
    fake.push(Fault.raw("this is not json"), Fault.raw('{"label": "meh"}'))
    pred = Classifier(sentiment_task, backend=fake.spec()).predict("good")
    assert pred.label == "positive"
    assert len(fake.chat_requests) == 3
    assert pred.usage.retries == 2
    # instructor re-asked with the validation error in the conversation
    last_messages = fake.chat_requests[-1]["messages"]
    assert any("meh" in str(m.get("content")) for m in last_messages)


def test_persistent_invalid_output_raises_typed_error_with_raw_output(fake, sentiment_task):
    fake.push(*[Fault.raw('{"label": "neutral"}')] * 3)
    clf = Classifier(sentiment_task, backend=fake.spec(max_reasks=2))
    with pytest.raises(OutputValidationError) as err:
        clf.predict("good")
    assert err.value.raw_output == '{"label": "neutral"}'
    # a failed request never writes the cache
    assert open_store().cache_count() == 0


def test_rate_limit_with_retry_after_is_retried(fake, sentiment_task):
    fake.push(Fault.status(429, retry_after=0.05), Fault.status(429, retry_after=0.05))
    pred = Classifier(sentiment_task, backend=fake.spec(**FAST)).predict("good")
    assert pred.label == "positive"
    assert pred.usage.retries == 2
    assert fake.fault_counts["status"] == 2


def test_rate_limit_that_persists_raises_rate_limit_error(fake, sentiment_task):
    fake.push(*[Fault.status(429, retry_after=0)] * 5)
    with pytest.raises(RateLimitError) as err:
        Classifier(sentiment_task, backend=fake.spec(max_retries=2, **FAST)).predict("good")
    assert err.value.attempts == 3


@pytest.mark.parametrize("code", [500, 503])
def test_server_errors_are_retried(fake, sentiment_task, code):
    fake.push(Fault.status(code))
    assert Classifier(sentiment_task, backend=fake.spec(**FAST)).predict("good").label == "positive"


def test_server_error_that_persists_is_typed(fake, sentiment_task):
    fake.push(*[Fault.status(500)] * 5)
    with pytest.raises(ProviderServerError):
        Classifier(sentiment_task, backend=fake.spec(max_retries=1, **FAST)).predict("good")


def test_auth_error_is_not_retried(fake, sentiment_task):
    fake.push(Fault.status(401))
    with pytest.raises(AuthError):
        Classifier(sentiment_task, backend=fake.spec(**FAST)).predict("good")
    assert len(fake.chat_requests) == 1


def test_timeout_is_retried_then_typed(fake, sentiment_task):
    fake.push(Fault.delay(1.0))
    clf = Classifier(sentiment_task, backend=fake.spec(timeout_s=0.3, **FAST))
    assert clf.predict("good").label == "positive"
    fake.push(*[Fault.delay(1.0)] * 3)
    with pytest.raises(ProviderTimeout):
        Classifier(sentiment_task, backend=fake.spec(timeout_s=0.3, max_retries=1, **FAST)).predict(
            "good again"
        )


def test_dropped_connection_and_empty_choices_are_retried(fake, sentiment_task):
    fake.push(Fault.drop(), Fault.empty_choices())
    pred = Classifier(sentiment_task, backend=fake.spec(**FAST)).predict("good")
    assert pred.label == "positive"
    assert pred.usage.retries >= 2


def test_cost_is_computed_for_a_priced_model(sentiment_task):
    with FakeProvider(default="positive") as fp:
        spec = f"llm:openai/gpt-4o-mini?api_base={fp.base_url}&api_key=sk-test"
        pred = Classifier(sentiment_task, backend=spec).predict("anything")
    assert pred.usage.cost_usd is not None and pred.usage.cost_usd > 0


def test_abstain_is_an_explicit_outcome(fake):
    task = Task.from_yaml_text(
        "name: t\nkind: multiclass\nallow_abstain: true\nlabels: {a: first, b: second}\n"
    )
    with FakeProvider(rules={"unclear": "abstain"}, default="a") as fp:
        clf = Classifier(task, backend=fp.spec())
        pred = clf.predict("it is unclear")
        assert pred.abstained and pred.labels == () and pred.label is None
        assert set(pred.scores) == {"a", "b"}
        assert pred.abstain_score is not None and pred.abstain_score > 0.5
        assert "abstain" in json.dumps(fp.chat_requests[-1]["response_format"])
        assert not clf.predict("clear").abstained


def test_binary_threshold_decides_the_label(sentiment_task):
    strict = sentiment_task.model_copy(update={"threshold": 0.95})
    with FakeProvider(default="positive", confidence=0.9) as fp:
        assert Classifier(sentiment_task, backend=fp.spec()).predict("x").label == "positive"
        assert Classifier(strict, backend=fp.spec()).predict("x").label == "negative"


def test_static_few_shot_examples_are_sent_as_turns(fake):
    task = Task.from_yaml_text(
        """
name: fs
kind: binary
positive_label: positive
prompt: few_shot
labels: {negative: dislikes it, positive: likes it}
examples:
  - {text: "what a waste of time", label: negative}
  - {text: "an instant classic", label: positive}
"""
    )
    Classifier(task, backend=fake.spec()).predict("good")
    messages = fake.chat_requests[-1]["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert "an instant classic" in messages[3]["content"]
    assert json.loads(messages[4]["content"]) == {"label": "positive"}


def test_bad_input_is_rejected_before_any_call(fake, sentiment_task):
    clf = Classifier(sentiment_task, backend=fake.spec())
    with pytest.raises(InputTextError, match="empty"):
        clf.predict("   ")
    long_task = sentiment_task.model_copy(update={"max_text_chars": 10})
    with pytest.raises(InputTextError, match=r"input #1.*over the limit of 10"):
        Classifier(long_task, backend=fake.spec()).predict_many(["short", "x" * 11])
    assert fake.chat_requests == []


def test_unknown_backend_spec_lists_valid_forms(sentiment_task):
    with pytest.raises(llmclf.BackendSpecError) as err:
        Classifier(sentiment_task, backend="gpt4")
    assert "llm:local" in str(err.value) and "setfit:" in str(err.value)
    with pytest.raises(llmclf.BackendSpecError, match="unknown backend kind 'foo'"):
        Classifier(sentiment_task, backend="foo:bar")
    with pytest.raises(llmclf.ConfigError, match="unknown LLM option 'temprature'"):
        Classifier(sentiment_task, backend="llm:openai/x?temprature=0")


def test_hints_are_accepted_by_plain_backends(fake, sentiment_task):
    pred = Classifier(sentiment_task, backend=fake.spec()).predict("good", Hints(max_latency_ms=5))
    assert pred.label == "positive"


# -- options are converted by their declared type -------------------------------------------------
def test_options_are_converted_by_their_declared_type(fake, sentiment_task):
    clf = Classifier(
        sentiment_task, backend=fake.spec(max_tokens=64, temperature="0.25", logprobs="false")
    )
    config = clf.backend.config
    assert (config.max_tokens, config.temperature, config.logprobs) == (64, 0.25, False)
    assert clf.predict("good one").label == "positive"  # min(max_tokens, 512) on an int
    assert fake.chat_requests[-1]["max_tokens"] == 64
    assert "logprobs" not in fake.chat_requests[-1]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("max_tokens", "lots", "expected int | None"),
        ("max_tokens", "6.5", "expected int | None"),
        ("temperature", "warm", "expected float"),
        ("logprobs", "maybe", "expected bool"),
        ("response_format", "xml", "expected ResponseFormat"),
    ],
)
def test_a_bad_option_value_is_a_config_error_naming_option_value_and_type(
    fake, sentiment_task, option, value, expected
):
    with pytest.raises(ConfigError) as info:
        Classifier(sentiment_task, backend=fake.spec(**{option: value}))
    message = str(info.value)
    assert message.startswith(f"LLM option {option}={value!r}: {expected} (")
    assert "\n" not in message
    assert fake.requests == []


def test_a_bad_secret_option_value_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        LLMConfig.from_options("openai/x", {"api_key": ["sk-secret-value"]})
    assert "sk-secret-value" not in str(info.value) and "api_key='***'" in str(info.value)


# -- a missing or refused API key -----------------------------------------------------------------
def test_a_missing_api_key_fails_at_once_without_any_request(fake, sentiment_task, monkeypatch):
    for var in ("OPENAI_API_KEY", "LLMCLF_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_BASE", fake.base_url)  # a request would land here
    clf = Classifier(sentiment_task, backend="llm:openai/gpt-4o-mini?max_retries=4&cache=false")
    faults = []
    clf.backend.hooks.on(Event.PROVIDER_FAULT, faults.append)
    start = time.monotonic()
    with pytest.raises(AuthError, match="no API key for openai/gpt-4o-mini: set OPENAI_API_KEY"):
        clf.predict("good")
    assert time.monotonic() - start < 2.0
    assert fake.requests == [] and faults == ["auth"]
    # once the key is set, the same backend asks the provider
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert clf.predict("good").label == "positive"
    assert len(fake.chat_requests) == 1


def test_a_missing_key_from_the_client_library_is_an_auth_error_not_a_server_error(monkeypatch):
    import litellm

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Exception) as info:  # the openai client refuses before any request
        litellm.completion(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
            api_base="http://127.0.0.1:9/v1", max_retries=0,
        )  # fmt: skip
    assert "Missing credentials" in str(info.value)
    typed, retryable = classify_provider_error(
        info.value, "b", auth_hint=lambda: "check X_API_KEY"
    )
    assert isinstance(typed, AuthError) and not retryable
    assert str(typed).endswith("(check X_API_KEY)")


def test_no_key_is_needed_for_an_openai_compatible_server(fake, sentiment_task, monkeypatch):
    for var in ("OPENAI_API_KEY", "LLMCLF_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert Classifier(sentiment_task, backend=fake.spec()).predict("good").label == "positive"
    assert missing_api_key_variables(LLMConfig("openai/x", api_base=fake.base_url)) == [
        "OPENAI_API_KEY"
    ]  # make_llm_backend sends a placeholder key to such a server instead
    assert missing_api_key_variables(LLMConfig("ollama/llama3.1")) == []  # no key, only a base


@pytest.mark.parametrize("code", [401, 403])
def test_a_refused_key_is_not_retried_and_says_what_to_check(fake, sentiment_task, code):
    fake.push(Fault.status(code))
    with pytest.raises(AuthError) as info:
        Classifier(sentiment_task, backend=fake.spec(max_retries=4, **FAST)).predict("good")
    assert len(fake.chat_requests) == 1 and info.value.attempts == 1
    assert "the server wants an API key: set LLMCLF_API_KEY or api_key=" in str(info.value)
    fake.push(Fault.status(code))
    with pytest.raises(AuthError, match=r"check api_key= in the backend spec"):
        Classifier(sentiment_task, backend=fake.spec(api_key="sk-wrong", **FAST)).predict("bad")


# -- request bodies for provider Batch APIs ------------------------------------------------------
def test_request_body_is_exactly_what_an_online_call_sends(fake, sentiment_task):
    """`request_body` (a Batch API line's body) is byte for byte the body the server receives
    from `classify`: prompt, label schema, logprob and temperature settings."""
    from llmclf.backends.registry import make_backend

    backend = make_backend(
        f"llm:openai/served-model?api_base={fake.base_url}&api_key=sk-x", sentiment_task
    )
    key, body = backend.request_body("I loved it")
    assert fake.requests == []  # built, not sent
    pred = backend.classify("I loved it")
    assert pred.label == "positive" and pred.score_source == "logprobs"
    (sent,) = fake.chat_requests
    assert sent == body
    assert body["model"] == "served-model"
    assert body["temperature"] == 0.0 and body["logprobs"] is True and body["top_logprobs"] == 20
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert schema["properties"]["label"]["enum"] == ["negative", "positive"]
    assert "guided_choice" not in body and "guided_json" not in body  # removed in vLLM 0.12
    # the answer to that body, validated offline, is the online prediction (and its cache key)
    resp = fake.answer_body(body)
    offline = backend.prediction_from_response("I loved it", resp)
    assert offline.labels == pred.labels and offline.scores == pred.scores
    assert backend.store.cache_get(key) is not None


# -- self-hosted vLLM teachers: vLLM's own structured outputs -------------------------------------
def _vllm_backend(fake: FakeProvider, task: Task, **options: str):
    from llmclf.backends.registry import make_backend

    query = "&".join(f"{k}={v}" for k, v in {"api_base": fake.base_url, **options}.items())
    return make_backend(f"llm:hosted_vllm/Qwen/Qwen2.5-7B-Instruct?{query}", task)


def _no_guided_fields(body: dict) -> bool:
    return not any(k.startswith("guided_") for k in body)


def test_vllm_single_label_sends_the_labels_as_structured_outputs_choice(fake, sentiment_task):
    """A ``hosted_vllm/`` teacher sends the label set in vLLM's ``structured_outputs.choice``
    (vLLM >= 0.12), no ``response_format`` (vLLM would add it as a second constraint) and no
    ``guided_*`` field; vLLM answers the bare label, which parses, and its logprobs score."""
    backend = _vllm_backend(fake, sentiment_task)
    key, body = backend.request_body("I loved it")
    pred = backend.classify("I loved it")
    (sent,) = fake.chat_requests
    assert sent == body  # a Batch API line is the online body
    assert sent == {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": sent["messages"],
        "temperature": 0.0,
        "max_tokens": 48,
        "logprobs": True,
        "top_logprobs": 20,
        "structured_outputs": {"choice": ["negative", "positive"]},
    }
    assert "response_format" not in sent and _no_guided_fields(sent)
    assert FakeProvider.text_of(sent) == "I loved it"
    # the server said "positive" (not JSON); it parses, and logprobs give the scores
    assert fake.answer_body(sent)["choices"][0]["message"]["content"] == "positive"
    assert pred.labels == ("positive",) and pred.score_source == "logprobs"
    assert pred.scores == {"negative": pytest.approx(0.1), "positive": pytest.approx(0.9)}
    # a Batch API result line for that body validates to the same prediction, same cache key
    offline = backend.prediction_from_response("I loved it", fake.answer_body(body))
    assert offline.labels == pred.labels and offline.scores == pred.scores
    assert backend.store.cache_get(key) is not None
    assert backend.classify("I loved it").cached and len(fake.chat_requests) == 1


def test_vllm_multiclass_with_abstain_and_a_bad_choice_is_re_asked(topic_task):
    task = topic_task.model_copy(update={"allow_abstain": True})
    with FakeProvider(rules={"match": "sports"}) as fp:
        backend = _vllm_backend(fp, task, **FAST)
        fp.push(Fault.raw("ecstatic"))  # a label outside the set (a server without the grammar)
        pred = backend.classify("the match ended 2-1")
        first, second = fp.chat_requests
        assert first["structured_outputs"] == {
            "choice": ["world", "sports", "business", "scitech", "abstain"]
        }
        assert second["structured_outputs"] == first["structured_outputs"]
        assert "response_format" not in second and _no_guided_fields(second)
        # the same scores as a JSON-schema answer with the same logprobs
        as_json = Classifier(task, backend=fp.spec()).predict("the match ended 2-1")
    assert pred.labels == ("sports",) and pred.score_source == "logprobs"
    assert pred.scores == as_json.scores and pred.scores["sports"] > 0.9
    assert pred.usage.retries == 1


def test_vllm_multilabel_sends_the_schema_as_structured_outputs_json(tags_task):
    with FakeProvider(rules={"wow": ["joy", "surprise"]}, default=["anger"]) as fp:
        backend = _vllm_backend(fp, tags_task)
        _, body = backend.request_body("wow, what a day")
        pred = backend.classify("wow, what a day")
        (sent,) = fp.chat_requests
    assert sent == body and "response_format" not in sent and _no_guided_fields(sent)
    schema = sent["structured_outputs"]["json"]
    assert set(sent["structured_outputs"]) == {"json"}
    assert schema["properties"]["labels"]["items"]["enum"] == ["joy", "anger", "surprise"]
    assert schema["required"] == ["labels"] and schema["additionalProperties"] is False
    assert sent["logprobs"] is True
    assert pred.labels == ("joy", "surprise") and pred.score_source == "logprobs"
    assert pred.scores["joy"] > 0.8 and pred.scores["anger"] < 0.2


def test_structured_outputs_option_for_a_vllm_server_reached_as_openai(fake, sentiment_task):
    """``response_format=structured_outputs`` sends vLLM's field to any OpenAI-compatible URL;
    ``response_format=none`` on ``hosted_vllm`` sends no constraint at all."""
    from llmclf.backends.registry import make_backend

    spec = fake.spec(response_format="structured_outputs")
    assert Classifier(sentiment_task, backend=spec).predict("good").label == "positive"
    assert fake.chat_requests[-1]["structured_outputs"] == {"choice": ["negative", "positive"]}
    assert "response_format" not in fake.chat_requests[-1]
    backend = _vllm_backend(fake, sentiment_task, response_format="none")
    assert backend.classify("good").label == "positive"
    assert "structured_outputs" not in fake.chat_requests[-1]
    assert "response_format" not in fake.chat_requests[-1]
    assert make_backend(fake.spec(), sentiment_task).classify("good").label == "positive"
    assert "structured_outputs" not in fake.chat_requests[-1]  # openai/: response_format


def test_fake_vllm_refuses_two_constraints(fake):
    """The fake answers like vLLM: two structured-output constraints are a 400."""
    import httpx

    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Text: x"}],
        "structured_outputs": {"choice": ["a", "b"], "json": {"type": "object"}},
    }
    r = httpx.post(f"{fake.base_url}/chat/completions", json=body)
    assert r.status_code == 400 and "one kind of constraints" in r.text


def test_prediction_from_response_validates_like_an_online_answer(fake, sentiment_task):
    from llmclf.backends.registry import make_backend

    backend = make_backend(fake.spec(), sentiment_task)
    _, body = backend.request_body("meh")
    resp = fake.answer_body(body)
    resp["choices"][0]["message"]["content"] = '{"label": "ecstatic"}'
    with pytest.raises(OutputValidationError) as err:
        backend.prediction_from_response("meh", resp)
    assert err.value.raw_output == '{"label": "ecstatic"}'
    with pytest.raises(ProviderServerError):
        backend.prediction_from_response("meh", {"choices": []})
    # without logprobs the single answer is one vote
    resp = fake.answer_body(body)
    resp["choices"][0]["logprobs"] = None
    pred = backend.prediction_from_response("meh", resp)
    assert pred.score_source == "votes" and pred.scores == {"negative": 1.0, "positive": 0.0}
