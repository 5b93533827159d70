"""Answers to reviews seen before, kept by the review's bytes: a ReplicaSet's pods.

The pods a ReplicaSet, a Job or a StatefulSet's controller creates at once reach the
webhook as reviews that are the same byte for byte but for the request's uid (the API
server gives each request its own; a pod of ``generateName`` has no name yet). Their
answers are the same too, but for the uid they echo: ``admit`` is a function of the
request's other fields, the snapshot and the policy. So an answer is kept as the response's
JSON around the uid, under the review's JSON with the uid taken out, for the snapshot and
policy it was decided on; a review seen before is answered without being parsed for its
pod, decided or serialised again.

A review is kept only where its uid's JSON occurs in it exactly once (then that occurrence
is the request's uid, or the reviews are identical), and only up to ``MAX_KEPT_BODY`` bytes.
It is kept the second time it is answered: a review seen once (a pod of another workload, a
new template) costs no more than its lookup. A review that failed or was refused is never
kept. A new snapshot or policy starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from webhook.cluster.snapshot import ClusterSnapshot, Memo
from webhook.outcome import Outcome
from webhook.policy import Policy
from webhook.reasons import Mode, Skip
from webhook.workload import WorkloadKey

# Reviews larger than this are decided every time: a pod review is 3-10 KiB.
MAX_KEPT_BODY = 64 * 1024
# Where the uid was in a kept review (a JSON text holds no NUL byte).
_HOLE = b"\x00"
# The reviews answered once, remembered (by their key's hash) to keep the second answer.
SEEN = 4096


def around_uid(text: bytes | bytearray, uid: str) -> tuple[memoryview, memoryview] | None:
    """``text`` before and after the JSON of ``uid``, where that occurs in it exactly once
    (else None): how a review, its response and its log line are cut to put another uid in."""
    mark = orjson.dumps(uid)
    at = text.find(mark)  # the request's uid comes first in what the API server sends
    if at < 0 or text.rfind(mark) != at:
        return None
    view = memoryview(text)
    return view[:at], view[at + len(mark) :]


@dataclass(frozen=True, slots=True)
class Answer:
    """A kept answer: the response's JSON before and after its uid, and what the admission's
    log line and metrics say of it (the fields ``Outcome`` has of the same names)."""

    head: bytes
    tail: bytes
    result: str
    mode: Mode | None
    skip: Skip | None
    reason: str
    workload: WorkloadKey | None
    sent: int  # the warnings the response carries
    # the admission's log line before its uid and between the uid and its duration (none
    # for a dry run, which leaves no line)
    line: tuple[bytes, bytes] | None = None

    def body(self, uid: str) -> bytes:
        return self.head + orjson.dumps(uid) + self.tail


class Answers:
    """Kept answers for the current snapshot and policy, bounded in count and bytes."""

    def __init__(self, limit: int = 512, max_bytes: int = 8 << 20) -> None:
        self.limit, self.max_bytes = limit, max_bytes
        self._memo = self._fresh()
        self._for: tuple[ClusterSnapshot, Policy] | None = None

    def _fresh(self) -> Memo:
        return Memo(self.limit, max_bytes=self.max_bytes, max_entry=4 * MAX_KEPT_BODY, seen=SEEN)

    @staticmethod
    def key(body: bytes | bytearray, review: object) -> bytes | None:
        """The JSON of ``review`` (``body``) with its uid taken out, or None where it is not to
        be kept (too large, no uid, the uid's JSON in it more than once)."""
        request = review.get("request") if isinstance(review, dict) else None
        uid = request.get("uid") if isinstance(request, dict) else None
        if not isinstance(uid, str) or not uid or len(body) > MAX_KEPT_BODY:
            return None
        cut = around_uid(body, uid)
        return None if cut is None else b"".join((cut[0], _HOLE, cut[1]))

    def get(self, key: bytes, snapshot: ClusterSnapshot, policy: Policy) -> Answer | None:
        kept = self._for
        if kept is None or kept[0] is not snapshot or kept[1] is not policy:
            self._memo = self._fresh()
            self._for = (snapshot, policy)
            return None
        return self._memo.get(key)  # type: ignore[return-value]

    def again(self, key: bytes, snapshot: ClusterSnapshot, policy: Policy) -> bool:
        """Whether the review ``key`` was made of was answered before on this snapshot and
        policy (then its answer is to be kept); a first answer is remembered."""
        kept = self._for
        if kept is None or kept[0] is not snapshot or kept[1] is not policy:
            return False  # decided on a snapshot that is no longer the current one
        return self._memo.again(key)

    def put(
        self,
        key: bytes,
        response: bytes,
        uid: str,
        outcome: Outcome,
        sent: int,
        line: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Keep ``response``, the answer to the review ``key`` was made of, where the uid is
        in it once (``again`` says when)."""
        cut = around_uid(response, uid)
        if cut is None:
            return
        answer = Answer(
            head=bytes(cut[0]),
            tail=bytes(cut[1]),
            result=outcome.result,
            mode=outcome.mode,
            skip=outcome.skip,
            reason=outcome.reason,
            workload=outcome.workload,
            sent=sent,
            line=line,
        )
        cost = len(key) + len(response) + (len(line[0]) + len(line[1]) if line else 0) + 512
        self._memo.put(key, answer, cost)

    def __len__(self) -> int:
        return len(self._memo)

    @property
    def bytes(self) -> int:
        """What the kept answers cost, as their entries state it."""
        return self._memo.bytes
