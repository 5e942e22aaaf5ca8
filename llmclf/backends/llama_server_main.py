"""Entry point of the embedded server: ``python -m llmclf.backends.llama_server_main ARGS``.

It is ``llama_cpp.server`` (same arguments, same OpenAI-compatible API) with one change: the
token logprobs of a non-streamed completion are computed with numpy from the logits llama.cpp
already produced. llama-cpp-python 0.3.x computes them by a Python ``sorted`` over the whole
262k-token Gemma vocabulary for every generated token and a softmax over the full context's
logits, which took 3.8 s of a 4.2 s call here; this takes about a millisecond.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """Patch ``Llama._create_completion`` so ``logprobs`` are computed with numpy."""
    from llama_cpp import Llama

    original = Llama._create_completion
    if getattr(original, "_llmclf_fast", False):
        return

    def _create_completion(self: Any, prompt: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        k = kwargs.get("logprobs")
        if k is None or kwargs.get("stream") or kwargs.get("echo") or not self._logits_all:
            yield from original(self, prompt, *args, **kwargs)
            return
        kwargs["logprobs"] = None
        results = list(original(self, prompt, *args, **kwargs))
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
            row_index = n_prompt - 1 + i
            if row_index >= self._scores.shape[0]:
                break
            logprobs, top = _top_logprobs(self._scores[row_index], int(k))
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


def main() -> None:
    install_fast_logprobs()
    from llama_cpp.server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()
