"""The online store on Redis: one store shared by every replica of the service.

Same interface, features, identities and idempotency as the SQLite store (`OnlineStoreBase`);
what differs is where the state lives and how a batch is made atomic across processes.

Keys, all under the configured namespace `ns`:
- `ns:meta` (hash): layout version, definitions fingerprint, watermark, profile columns;
- `ns:s:{customer_id}`: the state, `last_us` (8 bytes) + base aggregates + window buffer;
- `ns:p:{customer_id}`: profile values (JSON); `ns:i:{identifier}`: its customer_id;
  `ns:ids:{customer_id}` (set): the customer's identifiers;
- `ns:e:{event_id}` and the sorted set `ns:applied` (by ts): applied event ids;
- `ns:log` (sorted set by arrival number) and `ns:logc:{customer_id}` (by ts): the event log.

Atomicity: a batch is optimistic. The keys it reads (its event ids, its identifiers, the
states it may touch, the meta) are WATCHed, the batch is applied in Python, and its writes go in
one MULTI/EXEC; if another process changed a watched key meanwhile, EXEC fails and the batch is
read and applied again. So two replicas applying events of one customer at once serialise, and a
conditional batch (`expect`) commits only on the state it was decided on.

Durability: an EXEC's writes reach Redis's append-only file before the answer. With
`appendfsync always` an acknowledged batch is on disk (fsync) before the answer; with
`everysec` (Redis's default) it survives a crash of Redis, while a crash of the machine can lose
up to a second. The store refuses a Redis without `appendonly yes` unless
`online_store.require_aof` is off.

Materialisation is not one transaction here: `ns:meta` carries `materializing` from its start to
its end, and a service refuses to start on such a store.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import redis

from features.config import OnlineStoreConfig
from features.store.definitions import FeatureSet
from features.store.online_store import (
    SCHEMA_VERSION,
    DefinitionMismatch,
    OnlineStoreBase,
    _Batch,
    _Plan,
    _Replace,
    _StateRow,
    _Stored,
    log_frame,
    state_version,
)
from features.store.streaming import CustomerState

URL_VARIABLE = "NBA_REDIS_URL"
MAX_ATTEMPTS = 100  # optimistic retries of one batch under contention before giving up
_CHUNK = 5_000  # keys per MGET / pipeline flush
_STATE_HEAD = 8  # bytes of last_us before the base aggregates

# Appends log rows with consecutive arrival numbers (seq): KEYS = (log, seq counter); ARGV =
# (per-customer log key prefix, then customer_id, ts_us, JSON row per event). A member is the
# 15-digit seq and the row, so equal rows never collapse and ties sort by arrival.
_APPEND_LOG = """
local n = (#ARGV - 1) / 3
local last = redis.call('INCRBY', KEYS[2], n)
for i = 1, n do
  local seq = last - n + i
  local member = string.format('%015d', seq) .. ARGV[3 * i + 1]
  redis.call('ZADD', KEYS[1], seq, member)
  redis.call('ZADD', ARGV[1] .. ARGV[3 * i - 1], ARGV[3 * i], member)
end
return last
"""


class OnlineStoreUnavailable(RuntimeError):
    """The configured Redis cannot be reached, or would not keep what it acknowledges."""


def redis_url(config: OnlineStoreConfig) -> str:
    """The URL in force: NBA_REDIS_URL when set, else the configuration's."""
    return os.environ.get(URL_VARIABLE) or config.url


def redis_location(config: OnlineStoreConfig) -> str:
    """The store's place for messages, without a password."""
    parts = urlsplit(redis_url(config))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    safe = urlunsplit((parts.scheme, host, parts.path, "", ""))
    return f"{safe} (namespace {config.namespace})"


def _client(config: OnlineStoreConfig) -> redis.Redis:
    client = redis.Redis.from_url(redis_url(config), decode_responses=False)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise OnlineStoreUnavailable(
            f"cannot reach the online store's Redis at {redis_location(config)}: {exc}"
        ) from exc
    return client


def redis_store_exists(config: OnlineStoreConfig) -> bool:
    """True when the namespace holds a store (materialised or streamed into)."""
    client = _client(config)
    try:
        return bool(client.exists(f"{config.namespace}:meta"))
    finally:
        client.close()


def redis_logged_events(config: OnlineStoreConfig) -> pd.DataFrame | None:
    """The namespace's event log in arrival order (as `logged_events`); None when empty."""
    client = _client(config)
    try:
        members = client.zrange(f"{config.namespace}:log", 0, -1)
    finally:
        client.close()
    return log_frame([_log_row(m) for m in members]) if members else None


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _log_row(member: bytes) -> list[Any]:
    return [int(member[:15]), *json.loads(member[15:])]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RedisOnlineStore(OnlineStoreBase):
    """The online store in one Redis, shared by processes on any machine; thread-safe (the
    client's connection pool)."""

    backend = "redis"

    def __init__(self, config: OnlineStoreConfig, fs: FeatureSet, *, reset: bool = False) -> None:
        """Connect to the configured Redis and check its durability and the stored
        definitions. `reset=True` discards a store written with other feature definitions."""
        super().__init__(fs)
        self.config = config
        self.ns = config.namespace
        self._r = _client(config)
        self.appendfsync: str | None = None  # as Redis reports it, where CONFIG is allowed
        try:
            if config.require_aof:
                self._check_aof()
            self._check_definitions(reset)
        except BaseException:
            self._r.close()
            raise
        meta = self._meta_values("profile_columns", "profile_kinds")
        self._profile_names = json.loads(meta["profile_columns"] or "[]")
        self._profile_kinds = json.loads(meta["profile_kinds"] or "[]")

    # ------------------------------------------------------------------ keys

    @property
    def _k_meta(self) -> str:
        return f"{self.ns}:meta"

    def _k_state(self, customer_id: str) -> str:
        return f"{self.ns}:s:{customer_id}"

    def _k_profile(self, customer_id: str) -> str:
        return f"{self.ns}:p:{customer_id}"

    def _k_id(self, identifier: str) -> str:
        return f"{self.ns}:i:{identifier}"

    def _k_ids(self, customer_id: str) -> str:
        return f"{self.ns}:ids:{customer_id}"

    def _k_event(self, event_id: str) -> str:
        return f"{self.ns}:e:{event_id}"

    # ------------------------------------------------------------------ meta and lifecycle

    @property
    def location(self) -> str:
        return redis_location(self.config)

    def _check_aof(self) -> None:
        try:
            settings = {**self._r.config_get("appendonly"), **self._r.config_get("appendfsync")}
            aof, fsync = (_text(settings.get(k)) for k in ("appendonly", "appendfsync"))
        except redis.ResponseError:  # a managed Redis may forbid CONFIG: trust its operator
            return
        if aof != "yes":
            raise OnlineStoreUnavailable(
                f"the Redis at {self.location} keeps no append-only file (appendonly {aof}): "
                "acknowledged events would be lost when it restarts. Start it with "
                "`--appendonly yes --appendfsync always` (or everysec), or set "
                "online_store.require_aof: false"
            )
        self.appendfsync = fsync

    def _meta_values(self, *fields: str) -> dict[str, str | None]:
        values = self._r.hmget(self._k_meta, list(fields))
        return {f: None if v is None else v.decode() for f, v in zip(fields, values, strict=True)}

    def _check_definitions(self, reset: bool) -> None:
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._k_meta)
                    stored, version, spec = (
                        None if v is None else v.decode()
                        for v in pipe.hmget(
                            self._k_meta, ["fingerprint", "schema_version", "definitions"]
                        )
                    )
                    mismatch = stored is not None and (
                        stored != self._fingerprint or version != str(SCHEMA_VERSION)
                    )
                    if mismatch and not reset:
                        raise DefinitionMismatch(self._mismatch_message(stored, version, spec))
                    if mismatch:
                        pipe.unwatch()
                        self._clear_content(meta=True)
                        continue
                    if stored is None:
                        pipe.multi()
                        pipe.hset(
                            self._k_meta,
                            mapping={
                                "schema_version": str(SCHEMA_VERSION),
                                "fingerprint": self._fingerprint,
                                "definitions": self._spec,
                            },
                        )
                        pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def _clear_content(self, meta: bool = False) -> None:
        """Delete everything but the event log (and the meta unless asked)."""
        patterns = ["s:*", "p:*", "i:*", "ids:*", "e:*"]
        for pattern in patterns:
            batch: list[bytes] = []
            for key in self._r.scan_iter(match=f"{self.ns}:{pattern}", count=_CHUNK):
                batch.append(key)
                if len(batch) >= _CHUNK:
                    self._r.unlink(*batch)
                    batch = []
            if batch:
                self._r.unlink(*batch)
        self._r.unlink(f"{self.ns}:applied")
        if meta:
            self._r.unlink(self._k_meta)

    def close(self) -> None:
        self._r.close()

    @property
    def watermark_us(self) -> int | None:
        value = self._meta_values("watermark_us")["watermark_us"]
        return None if value is None else int(value)

    @property
    def materializing(self) -> bool:
        return bool(self._r.hexists(self._k_meta, "materializing"))

    # ------------------------------------------------------------------ reads

    def resolve(self, identifier: str) -> str | None:
        value = self._r.get(self._k_id(identifier))
        return None if value is None else value.decode()

    def identifiers(self, customer_id: str) -> list[str]:
        return sorted(v.decode() for v in self._r.smembers(self._k_ids(customer_id)))

    def customer_ids(self) -> list[str]:
        head = len(self._k_state(""))
        keys = self._r.scan_iter(match=self._k_state("*"), count=_CHUNK)
        return sorted(k.decode()[head:] for k in keys)

    def is_applied(self, event_id: str) -> bool:
        return bool(self._r.exists(self._k_event(event_id)))

    def _split(self, blob: bytes) -> tuple[int, bytes, bytes]:
        end = _STATE_HEAD + 8 * self.n_base
        return (
            int.from_bytes(blob[:_STATE_HEAD], "little", signed=True),
            blob[_STATE_HEAD:end],
            blob[end:],
        )

    def _fetch(self, customer_id: str) -> _Stored | None:
        with self._r.pipeline(transaction=False) as pipe:
            pipe.get(self._k_state(customer_id))
            pipe.get(self._k_profile(customer_id))
            pipe.exists(self._k_ids(customer_id))
            blob, data, known = pipe.execute()
        if blob is None and data is None and not known:
            return None
        last_us, base, win = (None, None, None) if blob is None else self._split(blob)
        return last_us, base, win, data

    def _fetch_many(self, customer_ids: list[str]) -> dict[str, _Stored | None]:
        with self._r.pipeline(transaction=False) as pipe:
            pipe.mget([self._k_state(c) for c in customer_ids])
            pipe.mget([self._k_profile(c) for c in customer_ids])
            blobs, profiles = pipe.execute()
        bare = [
            c
            for c, b, p in zip(customer_ids, blobs, profiles, strict=True)
            if b is None and p is None
        ]
        with self._r.pipeline(transaction=False) as pipe:
            for c in bare:
                pipe.exists(self._k_ids(c))
            known = dict(zip(bare, pipe.execute(), strict=True)) if bare else {}
        out: dict[str, _Stored | None] = {}
        for c, blob, data in zip(customer_ids, blobs, profiles, strict=True):
            if blob is None and data is None and not known.get(c):
                out[c] = None
            else:
                last_us, base, win = (None, None, None) if blob is None else self._split(blob)
                out[c] = (last_us, base, win, data)
        return out

    # ------------------------------------------------------------------ event application

    def _mget(self, pipe: redis.client.Pipeline, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for part in _chunks(keys):
            out += pipe.mget(part)
        return out

    def _commit(
        self,
        b: _Batch,
        valid: list[int],
        reasons: list[str | None],
        log_us: int | None,
        expect: Mapping[str, bytes | None] | None,
    ) -> _Plan | None:
        ids, keys = self._batch_keys(b, valid)
        e_keys = [self._k_event(e) for e in ids]
        i_keys = [self._k_id(k) for k in keys]
        expected = list((expect or {}).items())
        x_keys = [self._k_state(c) for c, _ in expected]
        with self._r.pipeline() as pipe:
            for _ in range(MAX_ATTEMPTS):
                attempt = list(reasons)  # the plan marks duplicates: start each try afresh
                try:
                    pipe.watch(self._k_meta, *e_keys, *i_keys, *x_keys)
                    now = self._mget(pipe, x_keys)
                    if any(v != want for v, (_, want) in zip(now, expected, strict=True)):
                        pipe.unwatch()
                        return None
                    wm = pipe.hget(self._k_meta, "watermark_us")
                    seen = {e for e, v in zip(ids, self._mget(pipe, e_keys), strict=True) if v}
                    idmap = {
                        k: v.decode()
                        for k, v in zip(keys, self._mget(pipe, i_keys), strict=True)
                        if v is not None
                    }
                    cids = sorted(set(idmap.values()) | self._new_customer_ids(b, valid, idmap))
                    s_keys = [self._k_state(c) for c in cids]
                    if s_keys:
                        pipe.watch(*s_keys)
                    states: dict[str, CustomerState | None] = {
                        c: None if blob is None else self._decode(*self._split(blob))
                        for c, blob in zip(cids, self._mget(pipe, s_keys), strict=True)
                    }
                    plan = self._plan(
                        b,
                        valid,
                        attempt,
                        None if wm is None else int(wm),
                        seen,
                        idmap,
                        states,
                        _never_loaded,
                        log_us,
                        # read outside the transaction: the guard may let a link or two more
                        # through under concurrent writers, never a merge of everyone
                        lambda c: int(self._r.scard(self._k_ids(c))),
                    )
                    pipe.multi()
                    self._write(pipe, plan)
                    pipe.execute()
                except redis.WatchError:
                    continue
                reasons[:] = attempt
                return plan
        raise RuntimeError(
            f"online store {self.location}: a batch of {b.n} events could not be committed in "
            f"{MAX_ATTEMPTS} attempts: other writers changed its customers each time"
        )

    def _write(self, pipe: redis.client.Pipeline, plan: _Plan) -> None:
        """Queue a plan's writes on a transaction pipeline."""
        if plan.states:
            pipe.mset(
                {self._k_state(c): state_version(*self._encode(s)) for c, s in plan.states.items()}
            )
        if plan.applied:
            pipe.mset({self._k_event(e): ts for e, ts in plan.applied})
            pipe.zadd(f"{self.ns}:applied", dict(plan.applied))
        if plan.identity:
            pipe.mset({self._k_id(i): c for i, c in plan.identity})
            by_customer: dict[str, list[str]] = {}
            for i, c in plan.identity:
                by_customer.setdefault(c, []).append(i)
            for c, idents in by_customer.items():
                pipe.sadd(self._k_ids(c), *idents)
        if plan.logged:
            args: list[Any] = [f"{self.ns}:logc:"]
            for row in plan.logged:
                args += [row[-2], row[1], json.dumps(row, allow_nan=False)]
            pipe.eval(_APPEND_LOG, 2, f"{self.ns}:log", f"{self.ns}:log:seq", *args)

    # ------------------------------------------------------------------ the event log

    def logged_events(self, after_seq: int = 0) -> pd.DataFrame:
        members = self._r.zrangebyscore(f"{self.ns}:log", f"({after_seq}", "+inf")
        return log_frame([_log_row(m) for m in members])

    def logged_events_of(self, customer_id: str) -> pd.DataFrame:
        members = self._r.zrevrange(f"{self.ns}:logc:{customer_id}", 0, -1)
        return log_frame([_log_row(m) for m in members])

    def forget_applied_before(self, before_us: int) -> int:
        applied = f"{self.ns}:applied"
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._k_meta, applied)
                    old = pipe.zrangebyscore(applied, "-inf", f"({before_us}")
                    wm = pipe.hget(self._k_meta, "watermark_us")
                    pipe.multi()
                    if wm is None or int(wm) < before_us:
                        pipe.hset(self._k_meta, "watermark_us", str(int(before_us)))
                    for part in _chunks(old):
                        pipe.unlink(*[self._k_event(e.decode()) for e in part])
                    pipe.zremrangebyscore(applied, "-inf", f"({before_us}")
                    pipe.execute()
                    return len(old)
                except redis.WatchError:
                    continue

    def forget_customer(self, customer_id: str, identifiers: Sequence[str] = ()) -> int:
        logc = f"{self.ns}:logc:{customer_id}"
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._k_ids(customer_id), logc)
                    members = pipe.zrange(logc, 0, -1)
                    idents = {m.decode() for m in pipe.smembers(self._k_ids(customer_id))}
                    idents |= set(identifiers)
                    events = [str(_log_row(m)[1]) for m in members]
                    pipe.multi()
                    pipe.unlink(
                        self._k_state(customer_id),
                        self._k_profile(customer_id),
                        self._k_ids(customer_id),
                        logc,
                        *[self._k_id(i) for i in idents],
                        *[self._k_event(e) for e in events],
                    )
                    if members:
                        pipe.zrem(f"{self.ns}:log", *members)
                    if events:
                        pipe.zrem(f"{self.ns}:applied", *events)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        # the append-only file still holds the erased writes: rewrite it from what is left
        with contextlib.suppress(redis.ResponseError):
            self._r.bgrewriteaof()
        return len(members)

    # ------------------------------------------------------------------ materialisation

    @contextmanager
    def _replacing(self) -> Iterator[_Replace]:
        """Marked `materializing` from the start until the new content is complete; a failure
        leaves the mark, so no service starts on half a store."""
        self._r.hset(self._k_meta, "materializing", str(time.time_ns() // 1000))
        self._clear_content()
        out = _RedisReplace(self)
        yield out
        with self._r.pipeline() as pipe:
            pipe.hset(self._k_meta, mapping=out.meta_values)
            pipe.hdel(self._k_meta, "materializing")
            pipe.execute()


def _never_loaded(customer_id: str) -> CustomerState | None:
    raise AssertionError(f"customer {customer_id}: a state the batch did not watch")


class _RedisReplace:
    """A materialisation's writes, pipelined in chunks (first identifier or profile wins, as
    the SQLite store's INSERT OR IGNORE)."""

    def __init__(self, store: RedisOnlineStore) -> None:
        self._s = store
        self.meta_values: dict[str, str] = {}

    def states(self, rows: list[_StateRow]) -> int:
        s = self._s
        for part in _chunks(rows):
            s._r.mset({s._k_state(c): state_version(t, base, win) for c, t, base, win in part})
        return len(rows)

    def identity(self, pairs: list[tuple[str, str]]) -> None:
        s = self._s
        for part in _chunks(pairs):
            with s._r.pipeline(transaction=False) as pipe:
                for ident, cid in part:
                    pipe.set(s._k_id(ident), cid, nx=True)
                taken = pipe.execute()
            with s._r.pipeline(transaction=False) as pipe:
                for (ident, cid), new in zip(part, taken, strict=True):
                    if new:
                        pipe.sadd(s._k_ids(cid), ident)
                pipe.execute()

    def profiles(self, rows: list[tuple[str, str]]) -> None:
        s = self._s
        for part in _chunks(rows):
            with s._r.pipeline(transaction=False) as pipe:
                for cid, data in part:
                    pipe.set(s._k_profile(cid), data, nx=True)
                pipe.execute()

    def meta(self, values: Mapping[str, str]) -> None:
        self.meta_values.update(values)
