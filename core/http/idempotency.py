"""`Idempotency-Key` on HTTP commands, as Stripe does it and as the IETF draft "The
Idempotency-Key HTTP Header Field" describes it.

A key belongs to its caller (the token's `sub`) and to the first request sent with
it: its method, its path and a fingerprint of its body. One record per (caller,
key) in `idempotency_keys`, claimed by an insert (the unique `_id` makes the claim
atomic across instances):

- the first request claims the key, runs, and its answer (status and body) is kept;
- the same request again gets that answer again, with `Idempotent-Replayed: true`,
  and runs nothing;
- the same key on another route or with another body: 422, naming the key (a
  command sent with a key used for another one would otherwise look done);
- the same request while the first is still running: 409;
- an answer that invites a retry (a 409 conflict between writers, 503, 500) is not
  kept: the key is released and the client may retry with it.

Records expire `idempotency.expire_after` (24 h) after the first request, on the
real clock like every lease (the test clock moves business time only): an expired
record is treated as absent on read, and each instance deletes expired records
every `idempotency.prune_interval`; on MongoDB the TTL index on `expires_at` does
it too. A claim whose process died is taken over after `idempotency.in_progress_lease`.

The commands underneath keep their own guard: the request's `message_id` (unique
to caller, key, method, path and body) is what an order or a case remembers in
`_applied`, so even a request replayed after its record expired changes nothing
twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from core.clock import utcnow
from core.errors import Conflict, InvalidInput
from core.settings import IdempotencySettings
from core.store import Store

log = structlog.get_logger("rescenter.idempotency")

COLLECTION = "idempotency_keys"
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_KEY_LENGTH = 200
IN_PROGRESS = "in_progress"
DONE = "done"
CLAIM_ATTEMPTS = 4


class IdempotencyKeyReused(InvalidInput):
    """The key was first used for another request: this one is refused, and runs nothing."""

    title, type_suffix = "Idempotency-Key reused", "idempotency-key-reused"


class IdempotencyKeyInUse(Conflict):
    """The first request with this key is still running: retry once it has answered."""

    title, type_suffix = "Idempotency-Key in use", "idempotency-key-in-use"


@dataclass(frozen=True)
class IdempotentRequest:
    """A request sent with an `Idempotency-Key`: who, which key, and what it asks."""

    caller: str
    key: str
    method: str
    path: str
    fingerprint: str

    @property
    def record_id(self) -> str:
        return _digest(self.caller, self.key)

    @property
    def message_id(self) -> str:
        """The id the command underneath remembers (`_applied`): one per request, so a key
        reused for another request can never pass for a repetition of the first."""
        return "http:" + _digest(self.caller, self.key, self.method, self.path, self.fingerprint)[:40]

    def same_request(self, record: dict[str, Any]) -> bool:
        return (record["method"], record["path"], record["fingerprint"]) == (self.method, self.path, self.fingerprint)


@dataclass(frozen=True)
class Claim:
    """The right to run the first request of a key; `token` proves it when finishing."""

    request: IdempotentRequest
    token: str


@dataclass(frozen=True)
class Replay:
    """The answer the first request got."""

    status: int
    content_type: str
    body: str

    def response(self) -> web.Response:
        return web.Response(text=self.body, status=self.status, content_type=self.content_type,
                            headers={REPLAYED_HEADER: "true"})


def idempotent_request(request: web.Request, caller: str, payload: bytes | None) -> IdempotentRequest | None:
    """The request's key and fingerprint, or None when it carries no key. `payload` is the
    body the route reads (None when it reads none: then a body sent anyway is ignored)."""
    key = request.headers.get(HEADER)
    if key is None or request.method not in METHODS:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidInput(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters")
    return IdempotentRequest(caller=caller, key=key, method=request.method, path=request.path_qs,
                             fingerprint=fingerprint(payload))


def fingerprint(payload: bytes | None) -> str:
    """The body as JSON with sorted keys and no spaces: the same request sent again with its
    fields in another order or spaced otherwise is the same request."""
    if payload is None:
        return _digest("")
    canonical = json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _digest(canonical)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class IdempotencyKeys:
    """The records of `Idempotency-Key`s: claim, replay, refuse, finish, expire."""

    def __init__(self, store: Store, settings: IdempotencySettings) -> None:
        self.collection = store.collection(COLLECTION)
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    async def create_indexes(self) -> None:
        # A TTL index: MongoDB deletes expired records itself; servers that ignore TTL
        # (the embedded store) still use it for the prune, and reads skip expired records.
        await self.collection.create_index("expires_at", expireAfterSeconds=0)

    async def begin(self, request: IdempotentRequest) -> Claim | Replay:
        """Claim the key for this request, or answer as the first request did; refuse a key
        used for another request (422) or still held by the first (409)."""
        for _ in range(CLAIM_ATTEMPTS):
            now = utcnow()
            token = uuid.uuid4().hex
            record = self._record(request, token, now)
            try:
                await self.collection.insert_one({"_id": request.record_id, **record})
                return Claim(request, token)
            except DuplicateKeyError:
                pass
            existing = await self.collection.find_one({"_id": request.record_id})
            if existing is None:
                continue  # pruned in between: claim it again
            expired = existing["expires_at"] <= now
            if not expired and not request.same_request(existing):
                raise IdempotencyKeyReused(_reused(request, existing), idempotency_key=request.key,
                                           first_request=f"{existing['method']} {existing['path']}")
            abandoned = existing["state"] == IN_PROGRESS and existing["lease_until"] <= now
            if expired or abandoned:
                # Forgotten, or its first request died with its process: take it over, once.
                taken = await self.collection.find_one_and_replace(
                    {"_id": request.record_id, "token": existing["token"]}, record,
                    return_document=ReturnDocument.AFTER)
                if taken is not None:
                    if abandoned and not expired:
                        log.warning("idempotency key taken over from a request that did not finish",
                                    key=request.key, path=request.path)
                    return Claim(request, token)
                continue
            if existing["state"] == IN_PROGRESS:
                raise IdempotencyKeyInUse(
                    f"a request with {HEADER} {request.key!r} is still being processed; "
                    "retry once it has answered", idempotency_key=request.key)
            return Replay(existing["status"], existing["content_type"], existing["body"])
        raise IdempotencyKeyInUse(f"{HEADER} {request.key!r} is changing hands; retry",
                                  idempotency_key=request.key)

    def _record(self, request: IdempotentRequest, token: str, now: datetime) -> dict[str, Any]:
        return {
            "caller": request.caller, "key": request.key, "method": request.method, "path": request.path,
            "fingerprint": request.fingerprint, "state": IN_PROGRESS, "token": token, "created_at": now,
            "expires_at": now + self.settings.expire_after, "lease_until": now + self.settings.in_progress_lease,
        }

    async def finish(self, claim: Claim, response: web.Response) -> None:
        """Keep the answer for the request's repetitions. If it cannot be kept, the claim
        lapses after its lease, and the command's own guard still keeps a retry harmless."""
        try:
            await self.collection.update_one(
                {"_id": claim.request.record_id, "token": claim.token},
                {"$set": {"state": DONE, "status": response.status, "content_type": response.content_type,
                          "body": response.text or "", "finished_at": utcnow()}},
            )
        except Exception as exc:
            log.warning("could not keep the answer of an idempotent request", key=claim.request.key,
                        error=repr(exc))

    async def release(self, claim: Claim) -> None:
        """Forget the claim: the answer invited a retry, which may use the same key."""
        try:
            await self.collection.delete_one({"_id": claim.request.record_id, "token": claim.token})
        except Exception as exc:
            log.warning("could not release an idempotency key; it lapses after its lease",
                        key=claim.request.key, error=repr(exc))

    async def prune(self) -> int:
        """Delete the expired records (reads already treat them as absent)."""
        result = await self.collection.delete_many({"expires_at": {"$lte": utcnow()}})
        return result.deleted_count

    async def _prune_forever(self) -> None:
        interval = self.settings.prune_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                pruned = await self.prune()
                if pruned:
                    log.info("expired idempotency keys deleted", count=pruned)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not delete expired idempotency keys; will retry", error=repr(exc))

    def start(self) -> None:
        self._task = asyncio.create_task(self._prune_forever(), name="idempotency-prune")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _reused(request: IdempotentRequest, first: dict[str, Any]) -> str:
    what = "with another body" if (first["method"], first["path"]) == (request.method, request.path) \
        else f"for {first['method']} {first['path']}"
    return (f"{HEADER} {request.key!r} was first used {what}: a key names one request; "
            "send a new request with a new key")


__all__ = ["IdempotencyKeys", "IdempotentRequest", "IdempotencyKeyReused", "IdempotencyKeyInUse",
           "idempotent_request", "HEADER", "REPLAYED_HEADER"]
