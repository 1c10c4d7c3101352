"""The feedback path and the gateway's online learners: a score for a logged request, stored and learned.

``POST /v1/feedback {request_id, score, comment?}`` reaches :meth:`OnlineLearning.feedback` (through
:meth:`turnout.gateway.pipeline.Gateway.feedback`), which:

1. looks the request up in the request log (off the event loop: a flush and a read). No log, no request
   with that id, or a request another API key made: an error, and nothing is stored (a key learns
   nothing about requests it did not make);
2. stores the score and comment in the log (the latest score of a request wins there; ``turnout logs
   export`` turns scored traffic into a routing table);
3. lets the route that served the request learn from it, when that route learns online (a bandit route,
   :mod:`turnout.gateway.bandit_route`) and its bandit decided the request; the answer then also says
   whether it learned (``learned``, ``detail``, ``route``, ``model``). Every other request's score is
   stored as before, with the same answer as before (``request_id``, ``score``, ``stored``).

:class:`OnlineLearning` also owns the learners' lifecycle: :meth:`OnlineLearning.start` starts one saver
task per route with a state file (it writes only when something was learned) and, per route that shares
its learning with other replicas (``bandit.share``), one exchange with the shared state right away (a
restarted or late replica starts from the cluster's statistics) and a task that repeats it every
``share_every_s`` (:mod:`turnout.gateway.bandit_sync`); :meth:`OnlineLearning.aclose` stops them, shares
and saves one last time, so a restart loses nothing that was learned before a clean shutdown (and at
most ``save_every_s`` of learning after a crash; with sharing, at most ``share_every_s`` of this replica's).

Example::

    result = await gateway.feedback(request_id, 0.9, comment="right answer", key=spec)
    result.learned, result.detail     # True, "big's arm learned the score (context kept in memory)"
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.errors import InvalidRequestError, NotFoundError, StateError, TurnoutError
from turnout.gateway.bandit_route import BanditRoute, Learned
from turnout.gateway.bandit_sync import BanditSync
from turnout.state.feedback_index import find_logged

if TYPE_CHECKING:
    from turnout.gateway.context import RequestContext
    from turnout.gateway.parts import GatewayParts
    from turnout.gateway.routes import RouteRuntime
    from turnout.types import Decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackResult:
    """The outcome of one feedback call: stored, and whether (and why not) a learner learned from it.

    ``learner`` is False when the request's route does not learn online (a deterministic route, a model
    asked for by name): the score is stored as it always was, and :meth:`to_dict` is the body
    ``/v1/feedback`` always answered (``request_id``, ``score``, ``stored``).
    """

    request_id: str
    score: float
    stored: bool
    learned: bool
    #: one sentence: what learned, or why nothing did
    detail: str
    route: str | None = None
    model: str | None = None
    #: whether the request's route learns online (then the body says what it learned)
    learner: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON body ``/v1/feedback`` answers with: ``learned``, ``detail``, ``route``, ``model`` for a learner's."""
        body = asdict(self)
        del body["learner"]
        if not self.learner:
            for k in ("learned", "detail", "route", "model"):
                del body[k]
        return body


class OnlineLearning:
    """The learners of one gateway (its bandit routes): the feedback path, the savers, the last save.

    Routes are looked up on the gateway at each call, so a route replaced after construction (a test's)
    is the one that learns.
    """

    def __init__(self, gw: GatewayParts) -> None:
        self.gw = gw
        self._savers: list[asyncio.Task[None]] = []
        self._sharers: list[asyncio.Task[None]] = []
        #: route name -> its exchange with the other replicas (routes that share, from :meth:`start` on)
        self.syncs: dict[str, BanditSync] = {}

    @property
    def routes(self) -> dict[str, BanditRoute]:
        """The routes that learn from feedback, by name."""
        return {n: rt for n, rt in self.gw.routes.items() if isinstance(rt, BanditRoute)}

    # -- the request path ------------------------------------------------------------------------
    def decided(self, ctx: RequestContext, route: RouteRuntime, decision: Decision, vector: np.ndarray | None) -> None:
        """A served (not dry-run) decision of ``route``: a learning route keeps its context for the feedback.

        The answer also carries the draw's probability (``x-turnout-propensity``), so a client that keeps
        its own outcomes can evaluate other policies off-line without the request log.
        """
        if isinstance(route, BanditRoute):
            route.remember(ctx.request_id, vector)
            ctx.response_headers["x-turnout-propensity"] = f"{decision.propensity:.6g}"

    async def feedback(self, request_id: str, score: float, comment: str | None = None, key: Any | None = None) -> FeedbackResult:
        """Store ``score`` for the logged request ``request_id`` and let its route learn from it.

        ``key`` is the authenticated :class:`~turnout.gateway.keys.KeySpec` (None without key store): only
        its own requests can be scored. Raises :class:`~turnout.errors.NotFoundError` for any other id,
        :class:`~turnout.errors.InvalidRequestError` when the request log is off or the score is not in
        [0, 1].
        """
        gw = self.gw
        request_log: Any = gw.request_log
        if request_log is None:
            raise InvalidRequestError("the request log is off (server.request_log: null); feedback cannot be stored")
        # any replica's request through the shared index (turnout.state.feedback_index; None in one process),
        # else this replica's own log: a flush and a read, off the loop
        entry = await find_logged(request_id, gw.feedback_index, lambda rid: gw.offloader.run(request_log.get, rid))
        # another key's request is "not found" too: a key learns nothing about requests it did not make
        if entry is None or (key is not None and entry.key_name != getattr(key, "name", None)):
            raise NotFoundError(no_such_request(request_id, getattr(key, "name", None)), param="request_id")
        request_log.set_feedback(request_id, score, comment)  # validates the score; queued, never blocks
        if gw.feedback_index is not None:
            try:  # every replica sees the latest score (a second one is then not learned twice)
                await gw.feedback_index.set_score(request_id, float(score))
            except StateError as exc:
                log.warning("feedback for %s: score stored here but not shared with the other replicas: %s", request_id, exc)
        rt = self.routes.get(entry.route or "")
        if rt is None:
            outcome = Learned(False, f"route {entry.route!r} does not learn online; the score is stored only")
        else:
            try:
                outcome = await rt.learn(entry, float(score), gw.embeddings.embed)
            except TurnoutError as exc:  # the score is stored; the learner's failure is logged, not the client's
                log.warning("feedback for %s: route %s could not learn from it: %s", request_id, rt.name, exc)
                outcome = Learned(False, f"stored, but route {rt.name!r} could not learn from it: {exc}")
        return FeedbackResult(
            request_id,
            float(score),
            True,
            outcome.learned,
            outcome.detail,
            entry.route,
            outcome.model or entry.model,
            learner=rt is not None,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """One saver task per route with a state file (it saves every ``save_every_s`` when something was learned);
        per sharing route a first exchange now, then one task exchanging every ``share_every_s``."""
        for rt in self.routes.values():
            if rt.shared is not None and rt.name not in self.syncs:
                sync = self.syncs[rt.name] = BanditSync(rt, rt.shared, route=rt.name)
                log.info("route %s: sharing the bandit's learning through %r under %s", rt.name, rt.shared, sync.key)
                await sync.sync()  # the cluster's statistics before the first request (failures are logged, not raised)
                self._sharers.append(asyncio.create_task(self._sharer(rt, sync), name=f"turnout-bandit-share:{rt.name}"))
            if rt.state_path is not None:
                self._savers.append(asyncio.create_task(self._saver(rt), name=f"turnout-bandit-saver:{rt.name}"))

    async def share(self) -> dict[str, bool]:
        """Exchange every sharing route's statistics with the other replicas now: route -> whether it merged any."""
        return {name: await sync.sync() for name, sync in self.syncs.items()}

    async def _sharer(self, rt: BanditRoute, sync: BanditSync) -> None:
        while sync.stopped is None:
            await asyncio.sleep(rt.share_every_s)
            await sync.sync()  # a merge marks the route dirty: its saver writes the state file

    async def _saver(self, rt: BanditRoute) -> None:
        while True:
            await asyncio.sleep(rt.save_every_s)
            await self._save(rt, "periodic")

    async def _save(self, rt: BanditRoute, why: str) -> None:
        try:
            if await self.gw.offloader.run(rt.save):
                log.debug("route %s: bandit state saved to %s (%s)", rt.name, rt.state_path, why)
        except (OSError, TurnoutError) as exc:  # a full disk must not take the gateway down; say what is at risk
            log.error(
                "route %s: could not save the bandit state to %s (%s save): %s; what it learned since the "
                "last save is lost if the gateway stops now",
                rt.name,
                rt.state_path,
                why,
                exc,
            )

    async def aclose(self) -> None:
        """Stop the savers and exchanges; share, then save every learning route's state one last time. Idempotent."""
        tasks, self._savers, self._sharers = [*self._savers, *self._sharers], [], []
        for task in tasks:
            task.cancel()  # an exchange cancelled mid-way loses nothing (gateway/bandit_sync.py)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.share()  # what this replica learned since the last exchange goes out before it stops
        self.syncs = {}
        for rt in self.routes.values():
            if rt.state_path is not None:
                await self._save(rt, "shutdown")


def no_such_request(request_id: str, key_name: str | None) -> str:
    """Why feedback found no request to score, and which id to send instead."""
    fix = "send the x-turnout-request-id header of the answer you are scoring as 'request_id'"
    if request_id.startswith("chatcmpl-"):
        return f"{request_id!r} is the 'id' of a chat completion, which turnout does not log: {fix}"
    made = f" made with key {key_name!r}" if key_name is not None else ""
    return f"no request {request_id!r}{made} in the request log: {fix}"


__all__ = ["FeedbackResult", "OnlineLearning", "no_such_request"]
