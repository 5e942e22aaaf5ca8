"""Entry point of the embedded server: ``python -m llmclf.backends.llama_server_main ARGS``.

It is ``llama_cpp.server`` (same arguments, same OpenAI-compatible API) with two changes:

- Token logprobs of a non-streamed completion come from the logits of each decoding step,
  recorded as they are produced, so the server runs with ``logits_all`` off. With it on, every
  prompt token is projected onto Gemma's 262k-token vocabulary and llama-cpp-python sorts that
  vocabulary in Python for every generated token; that cost seconds per call on 2 cores.
- Two chat formats are registered. ``plain`` (the default of ``llm:local``) lays the messages
  out as plain text, the way a pretrained base model such as the packaged
  ``google/gemma-3-270m`` reads documents; ``gemma3`` is Gemma 3's instruction-tuned template,
  for ``-it`` GGUFs (see `register_chat_formats`).
- The server exits when the process that started it dies (`exit_with_parent`).
- It lowers its own CPU priority by ``$LLMCLF_SERVER_NICE`` before it starts any thread, so
  every llama.cpp thread runs below the process that uses it (see `LocalServer`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-softmax of one logits row and the ids of its ``k`` largest entries."""
    row = logits.astype(np.float64)
    row = row - row.max()
    logprobs = row - np.log(np.exp(row).sum())
    top = np.argpartition(-logprobs, min(k, len(logprobs) - 1))[:k]
    top = top[np.argsort(-logprobs[top])]
    return logprobs, top


def install_fast_logprobs() -> None:
    """Patch ``Llama`` so ``logprobs`` come from per-step logits, computed with numpy."""
    from llama_cpp import Llama

    original = Llama._create_completion
    if getattr(original, "_llmclf_fast", False):
        return
    original_eval = Llama.eval

    def eval_recording(self: Any, tokens: Any) -> None:
        original_eval(self, tokens)
        rows = getattr(self, "_llmclf_rows", None)
        if rows is not None and not self._logits_all:
            logits = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(self._n_vocab,))
            rows.append(logits.copy())

    def _create_completion(self: Any, prompt: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        k = kwargs.get("logprobs")
        if k is None or kwargs.get("stream") or kwargs.get("echo"):
            yield from original(self, prompt, *args, **kwargs)
            return
        kwargs["logprobs"] = None
        self._llmclf_rows = []
        try:
            results = list(original(self, prompt, *args, **kwargs))
            step_logits: list[np.ndarray] = self._llmclf_rows
        finally:
            self._llmclf_rows = None
        result = results[-1]
        usage = result["usage"]
        n_prompt = int(usage["prompt_tokens"])
        n_completion = int(usage["completion_tokens"])
        evaluated = [int(t) for t in self._input_ids[n_prompt : self.n_tokens]]
        text = result["choices"][0]["text"]
        done = self.detokenize(evaluated).decode("utf-8", errors="ignore")
        rest = text[len(done) :] if text.startswith(done) else ""
        completion = evaluated + (
            self.tokenize(rest.encode(), add_bos=False, special=True) if rest else []
        )
        completion = completion[: max(n_completion, len(evaluated))]
        tokens: list[str] = []
        offsets: list[int] = []
        token_logprobs: list[float] = []
        top_list: list[dict[str, float]] = []
        pos = 0
        for i, tok in enumerate(completion):
            if i >= len(step_logits):
                break
            logprobs, top = _top_logprobs(step_logits[i], int(k))
            prev = completion[:i]
            tok_str = self.detokenize([tok], prev_tokens=prev).decode("utf-8", errors="ignore")
            tops = {
                self.detokenize([int(t)], prev_tokens=prev).decode("utf-8", errors="ignore"): float(
                    logprobs[int(t)]
                )
                for t in top
            }
            tops[tok_str] = float(logprobs[tok])
            tokens.append(tok_str)
            offsets.append(pos)
            pos += len(tok_str)
            token_logprobs.append(float(logprobs[tok]))
            top_list.append(tops)
        result["choices"][0]["logprobs"] = {  # type: ignore[typeddict-item]
            "tokens": tokens,
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_list,
        }
        yield result

    _create_completion._llmclf_fast = True  # type: ignore[attr-defined]
    Llama._create_completion = _create_completion  # type: ignore[method-assign]
    Llama.eval = eval_recording  # type: ignore[method-assign]


NICE_ENV = "LLMCLF_SERVER_NICE"
GEMMA3_CHAT_FORMAT = "gemma3"
PLAIN_CHAT_FORMAT = "plain"


def render_plain(messages: list[Any]) -> str:
    """Chat messages as one plain-text document, for a base (not instruction-tuned) model.

    The system text comes first, then each turn on its own line; an assistant turn (a few-shot
    answer) is followed by a blank line, so examples read as separate blocks, and the model
    continues right after the last user turn.

    >>> render_plain([{"role": "system", "content": "Classify."},
    ...               {"role": "user", "content": "Text: a"},
    ...               {"role": "assistant", "content": '{"label": "x"}'},
    ...               {"role": "user", "content": "Text: b"}])
    '<bos>Classify.\\n\\nText: a\\n{"label": "x"}\\n\\nText: b\\n'
    """
    system = "\n\n".join(str(m["content"]).strip() for m in messages if m["role"] == "system")
    prompt = "<bos>" + (f"{system}\n\n" if system else "")
    for m in messages:
        content = str(m.get("content") or "").strip()
        if m["role"] == "user":
            prompt += f"{content}\n"
        elif m["role"] == "assistant":
            prompt += f"{content}\n\n"
    return prompt


def register_chat_formats() -> None:
    """Register the ``plain`` and ``gemma3`` chat formats with llama-cpp-python."""
    from llama_cpp import llama_chat_format as fmt

    if PLAIN_CHAT_FORMAT not in fmt.LlamaChatCompletionHandlerRegistry()._chat_handlers:

        @fmt.register_chat_format(PLAIN_CHAT_FORMAT)
        def format_plain(messages: list[Any], **kwargs: Any) -> Any:
            return fmt.ChatFormatterResponse(
                prompt=render_plain(messages), stop="\n\n", added_special=True
            )

    register_gemma3_chat_format()


def register_gemma3_chat_format() -> None:
    """Register Gemma 3's chat template as ``gemma3``.

    The GGUF carries no chat template, so llama-cpp-python would fall back to Llama 2's
    ``[INST]`` format, and its own ``gemma`` format drops the system message. Gemma 3 has no
    system role: its template puts the system text at the top of the first user turn.
    """
    from llama_cpp import llama_chat_format as fmt

    if GEMMA3_CHAT_FORMAT in fmt.LlamaChatCompletionHandlerRegistry()._chat_handlers:
        return

    @fmt.register_chat_format(GEMMA3_CHAT_FORMAT)
    def format_gemma3(messages: list[Any], **kwargs: Any) -> Any:
        system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system")
        prompt = "<bos>"
        first_user = True
        for m in messages:
            role = m["role"]
            if role == "system":
                continue
            content = str(m.get("content") or "")
            if role == "user" and first_user and system:
                content = f"{system}\n\n{content}"
            if role == "user":
                first_user = False
            turn = "model" if role == "assistant" else "user"
            prompt += f"<start_of_turn>{turn}\n{content}<end_of_turn>\n"
        prompt += "<start_of_turn>model\n"
        return fmt.ChatFormatterResponse(prompt=prompt, stop="<end_of_turn>", added_special=True)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Exit when the process that started the server dies, even by ``kill -9``.

    The server runs in its own session (a Ctrl-C aimed at a CLI must not kill it mid-request),
    so nothing else would stop it once its owner is gone.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="llmclf-parent-watch", daemon=True).start()


def lower_priority() -> None:
    """``os.nice($LLMCLF_SERVER_NICE)``, before any thread exists (threads inherit it)."""
    raw = os.environ.get(NICE_ENV, "").strip()
    if not raw or int(raw) <= 0:
        return
    os.nice(int(raw))
    # With Linux's autogroup scheduling (on by default on desktops and many servers), this
    # process's new session is a scheduling group of its own that competes with its parent's
    # group as an equal whatever the threads' nice value: lower the group's priority too.
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(f"{min(19, int(raw))}\n")


def main() -> None:
    lower_priority()
    install_fast_logprobs()
    register_chat_formats()
    exit_with_parent()
    from llama_cpp.server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()
