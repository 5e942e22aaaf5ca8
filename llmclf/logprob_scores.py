"""Turn token logprobs of a JSON answer into a score for every allowed label.

Constrained decoding returns the model's raw token logprobs. At each token of the label value we
keep only the alternatives that could still spell an allowed label, renormalise over them, and
walk the chosen path: mass that leaves the path goes to the labels its token could start.

Example:
    >>> toks = [("{\\"label\\": \\"", [("{\\"label\\": \\"", 0.0)]),
    ...         ("pos", [("pos", -0.1), ("neg", -2.4), ("maybe", -0.5)]),
    ...         ("itive\\"}", [("itive\\"}", 0.0)])]
    >>> s = label_scores_from_tokens(toks, ["positive", "negative"], multilabel=False)
    >>> round(s["positive"], 3), round(s["negative"], 3)
    (0.909, 0.091)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

TokenAlternatives = tuple[str, Sequence[tuple[str, float]]]

_SINGLE_RE = re.compile(r'"label"\s*:\s*"')
_MULTI_RE = re.compile(r'"labels"\s*:\s*\[')


def _consistent(s: str, targets: Sequence[str]) -> list[str]:
    """Labels whose quoted form ``label"`` is compatible with the partial value ``s``."""
    out = []
    for lab in targets:
        full = lab + '"'
        if full.startswith(s) or s.startswith(full):
            out.append(lab)
    return out


def _walk_value(
    tokens: Sequence[TokenAlternatives],
    offsets: Sequence[int],
    value_start: int,
    choices: Sequence[str],
) -> dict[str, float] | None:
    """Distribution over ``choices`` for the value starting at char ``value_start``."""
    idx = next(
        (
            i
            for i in range(len(tokens))
            if offsets[i] <= value_start < offsets[i] + len(tokens[i][0])
        ),
        None,
    )
    if idx is None:
        return None
    mass = dict.fromkeys(choices, 0.0)
    path_prob = 1.0
    consumed = ""
    start_in_token = value_start - offsets[idx]
    i = idx
    while i < len(tokens):
        chosen, alts = tokens[i]
        # the part of the first token that lies before the value (e.g. the opening quote)
        prefix = chosen[:start_in_token] if i == idx else ""
        rem_chosen = chosen[len(prefix) :]
        # Group alternatives by the labels they could still spell and keep each group's most
        # likely token: a label's canonical token ("negative") carries its probability, while
        # short prefixes ("n") are mostly other words ("null", "none") and would inflate it.
        groups: dict[frozenset[str], float] = {}
        for alt, lp in alts:
            if not alt.startswith(prefix):
                continue
            rem = alt[len(prefix) :]
            labs = frozenset(_consistent(consumed + rem, choices)) if rem else frozenset()
            if labs:
                groups[labs] = max(groups.get(labs, 0.0), math.exp(lp))
        chosen_group = frozenset(_consistent(consumed + rem_chosen, choices))
        if not chosen_group:
            break
        # the chosen token may be missing from the alternatives when the grammar forced it
        groups.setdefault(chosen_group, 1e-6)
        total = sum(groups.values())
        for labs, w in groups.items():
            if labs == chosen_group:
                continue
            share = path_prob * (w / total) / len(labs)
            for lab in labs:
                mass[lab] += share
        path_prob *= groups[chosen_group] / total
        consumed += rem_chosen
        done = _consistent(consumed, choices)
        if len(done) <= 1:  # the rest of the value is forced: the path is decided
            for lab in done:
                mass[lab] += path_prob
            break
        i += 1
    total = sum(mass.values())
    if total <= 0:
        return None
    return {k: v / total for k, v in mass.items()}


def _offsets(tokens: Sequence[TokenAlternatives]) -> tuple[str, list[int]]:
    text, offs, pos = [], [], 0
    for tok, _ in tokens:
        offs.append(pos)
        text.append(tok)
        pos += len(tok)
    return "".join(text), offs


def label_scores_from_tokens(
    tokens: Sequence[TokenAlternatives],
    choices: Sequence[str],
    *,
    multilabel: bool,
) -> dict[str, float] | None:
    """A score per choice from ``(token, [(alternative, logprob), ...])`` pairs.

    Single-label: a distribution summing to 1. Multi-label: independent scores, the chance each
    label appears in some slot of the list. None when the tokens carry no usable logprobs.
    """
    if not tokens:
        return None
    text, offs = _offsets(tokens)
    if not multilabel:
        m = _SINGLE_RE.search(text)
        if not m:
            return None
        return _walk_value(tokens, offs, m.end(), choices)
    m = _MULTI_RE.search(text)
    if not m:
        return None
    end = text.find("]", m.end())
    end = len(text) if end < 0 else end
    slots = [q.end() for q in re.finditer(r'"', text[m.end() : end])]
    # quotes alternate open/close: value starts are after every other quote
    starts = [m.end() + s for s in slots[0::2]]
    scores = dict.fromkeys(choices, 0.0)
    for start in starts:
        dist = _walk_value(tokens, offs, start, choices)
        if dist is None:
            continue
        for lab, p in dist.items():
            scores[lab] = 1.0 - (1.0 - scores[lab]) * (1.0 - p)
    return scores
