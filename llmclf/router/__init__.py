"""``router:CONFIG``: a `Backend` made of backends — the student first, the LLM when it matters.

A router answers every text from one of its named backends and says how it got there:
each `Prediction` it returns carries ``route`` (the names of the backends tried, in order)
and ``route_reason`` (``"student confident 0.97>=0.80"``, ``"escalated: 0.55<0.80"``,
``"latency budget: answered by student ..."``, ``"forced by hint"``,
``"fallback after llm failed: ..."``). ``Prediction.backend`` is the name of the backend that
answered, as the config names it.

A router is a tree of policies, each a `Backend` made of backends (one module each):

| module | policy | what it decides |
|---|---|---|
| ``slot`` | `Slot` | one named backend: timeout, concurrency, latency estimate |
| ``fallback`` | `Fallback` | the next backend when one fails (`AllBackendsFailed` when all do) |
| ``cascade`` | `Cascade` | the student when confident, else escalate (within the latency budget) |
| ``ab`` | `ABSplit` | an A/B arm per text, by weight, sticky on ``Hints.request_key`` |
| ``entry`` | `Entry` | ``Hints.backend`` forces one backend; reports each answer |
| ``shadow`` | `Shadow` | a share of the answers also asked of a shadow backend (drift signal) |
| ``review`` | `Review` | low-confidence answers go to the review queue |
| ``shortlist`` | (a stage) | the LLMs ask only among a student's top-k labels |

``config`` loads and checks the YAML file (errors name file, line and field) and builds the
backends with an injected ``make_backend``; ``tree`` builds the policies; `Router` (``facade``)
is the thin facade: the tree, its stats (``stats``, counted from the typed events of
`llmclf.hooks.Event`) and a sync portal. The latency budget (``Hints.max_latency_ms``) travels
down the tree as ``Hints.deadline``, nested routers included.

To add a policy: a `Policy` subclass in its own module (``route`` returns `Routed` answers and
appends to their ``route``/``reason``), a config section in ``config``, a place in ``tree``.

Example:
    >>> router = Router.from_yaml("router.yaml")                     # doctest: +SKIP
    >>> p = router.predict_batch(["a gorgeous, witty film"])[0]
    >>> p.label, p.route, p.route_reason
    ('positive', ('student',), 'student confident 0.97>=0.80')
"""

from llmclf.router.ab import ABSplit
from llmclf.router.cascade import Cascade
from llmclf.router.config import (
    CASCADE_ARM,
    ABConfig,
    BackendEntry,
    CascadeConfig,
    MakeBackend,
    ResolvedRouter,
    ReviewConfig,
    RouterConfig,
    RouterFile,
    ShadowConfig,
    load_router_config,
    resolve_router_config,
)
from llmclf.router.entry import Entry
from llmclf.router.facade import Router
from llmclf.router.fallback import Fallback
from llmclf.router.policy import Policy, RouteContext, Routed
from llmclf.router.review import Review
from llmclf.router.shadow import Shadow, ShadowStats
from llmclf.router.shortlist import ShortlistConfig
from llmclf.router.slot import Slot
from llmclf.router.stats import ArmStats, RouterListener, RouterStats
from llmclf.router.tree import Tree, build_tree

__all__ = [
    "CASCADE_ARM",
    "ABConfig",
    "ABSplit",
    "ArmStats",
    "BackendEntry",
    "Cascade",
    "CascadeConfig",
    "Entry",
    "Fallback",
    "MakeBackend",
    "Policy",
    "ResolvedRouter",
    "Review",
    "ReviewConfig",
    "RouteContext",
    "Routed",
    "Router",
    "RouterConfig",
    "RouterFile",
    "RouterListener",
    "RouterStats",
    "Shadow",
    "ShadowConfig",
    "ShadowStats",
    "ShortlistConfig",
    "Slot",
    "Tree",
    "build_tree",
    "load_router_config",
    "resolve_router_config",
]
