"""Build a router's tree of policies from its resolved config.

```
Review                      (review: {strategy, threshold, budget, min_per_label})
└─ Shadow                   (shadow: {backend, share})
   └─ Entry                 Hints.backend forces one slot; reports routed / failed
      └─ ABSplit            (ab: {arms})                     arm "cascade" or a backend name
         ├─ Cascade         (cascade: {student, escalate_to, threshold})
         │  ├─ Slot student
         │  └─ Fallback     escalate_to, then the fallbacks
         └─ Fallback        an arm's backend, then the fallbacks
```

Without ``ab`` the entry's policy is the cascade, or (without a cascade) a `Fallback` over the
``fallbacks`` list. Every backend the config names is one `Slot`, shared by every policy that
uses it.

Example:
    >>> tree = build_tree(resolve_router_config(load_router_config("router.yaml"),
    ...                   make_backend=make_backend), hooks=Hooks())        # doctest: +SKIP
    >>> [b.name for b in tree.root.walk()][:3]
    ['entry', 'cascade', 'student']
"""

from __future__ import annotations

from dataclasses import dataclass

from llmclf.hooks import Hooks
from llmclf.review_strategies import ReviewGate
from llmclf.router.ab import ABSplit
from llmclf.router.cascade import Cascade
from llmclf.router.config import CASCADE_ARM, ResolvedRouter
from llmclf.router.entry import Entry
from llmclf.router.fallback import Fallback
from llmclf.router.policy import Policy
from llmclf.router.review import Review
from llmclf.router.shadow import Shadow
from llmclf.router.slot import Slot

__all__ = ["Tree", "build_tree"]


@dataclass(frozen=True)
class Tree:
    """The policies of one router: ``root`` answers; the others are kept for their stats."""

    root: Policy
    entry: Entry
    slots: dict[str, Slot]
    ab: ABSplit | None
    shadow: Shadow | None
    review: Review | None


def build_tree(plan: ResolvedRouter, *, hooks: Hooks, router: str = "router") -> Tree:
    """The policies ``plan``'s config describes, all emitting to ``hooks``.

    ``router`` names the router in log lines."""
    config, task = plan.config, plan.task
    default_timeout = config.timeouts.get("default")
    slots: dict[str, Slot] = {}
    for name, backend in plan.backends.items():
        spec = config.backends.get(name)
        ms = spec.timeout_ms if spec and spec.timeout_ms else None
        ms = config.timeouts.get(name, ms if ms is not None else default_timeout)
        micro = spec.microbatch if spec is not None else None
        if micro is None:
            micro = config.cascade is not None and name == config.cascade.student
        slots[name] = Slot(
            name,
            backend,
            timeout_s=ms / 1000.0 if ms else None,
            concurrency=spec.concurrency if spec else 16,
            microbatch=bool(micro),
            hooks=hooks,
        )
    fallbacks = [slots[n] for n in config.fallbacks]

    def first_then_fallbacks(first: str) -> Fallback:
        return Fallback(
            [slots[first], *fallbacks], task=task, name=f"fallback:{first}", hooks=hooks,
            router=router,
        )  # fmt: skip

    cascade: Cascade | None = None
    if config.cascade is not None:
        student, esc = config.cascade.student, config.cascade.escalate_to
        chain = [slots[esc]] + [slots[f] for f in config.fallbacks if f not in (student, esc)]
        escalation = Fallback(chain, task=task, name="escalation", hooks=hooks, router=router)
        cascade = Cascade(
            slots[student], escalation, plan.thresholds, task=task, hooks=hooks, router=router
        )

    ab: ABSplit | None = None
    main: Policy
    if config.ab is not None:
        arms: dict[str, Policy] = {}
        for arm in config.ab.arms:
            if arm == CASCADE_ARM:
                assert cascade is not None  # checked with the config
                arms[arm] = cascade
            else:
                arms[arm] = first_then_fallbacks(arm)
        main = ab = ABSplit(
            arms, config.ab.arms, task=task, sticky=config.ab.sticky, hooks=hooks
        )
    elif cascade is not None:
        main = cascade
    else:
        main = first_then_fallbacks(config.fallbacks[0])

    entry = Entry(main, slots, task=task, hooks=hooks)
    root: Policy = entry
    shadow: Shadow | None = None
    if config.shadow is not None:
        root = shadow = Shadow(
            root, plan.backends[config.shadow.backend], config.shadow, task=task,
            seed=config.seed, hooks=hooks, router=router,
        )  # fmt: skip
    review: Review | None = None
    if config.review is not None:
        rc = config.review
        gate = ReviewGate(
            strategy=rc.strategy, threshold=rc.threshold, budget=rc.budget,
            min_per_label=rc.min_per_label, labels=task.label_names,
        )  # fmt: skip
        root = review = Review(
            root, gate=gate, task=task, store=plan.store, hooks=hooks, router=router
        )
        if shadow is not None and rc.strategy == "disagreement":
            shadow.on_compared(review.on_shadow_compared)
    return Tree(root=root, entry=entry, slots=slots, ab=ab, shadow=shadow, review=review)
