"""The run: chunks of persons simulated (in worker processes) and written out with their truth."""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from features.ingest.contract import (
    CUSTOMER_KEY,
    EVENT_SCHEMA,
)
from features.synthetic.campaigns import ACTIONS, Campaigns, actions_catalogue, campaign_schedule
from features.synthetic.consent import Consent
from features.synthetic.draws import decode, hex_strings, ts_us_of
from features.synthetic.event_log import EventLog
from features.synthetic.identities import Identities
from features.synthetic.params import ChunkSpec, WorldParams, WorldSummary
from features.synthetic.population import Population
from features.synthetic.purchases import Purchases, seasonality, seasonality_definition
from features.synthetic.responses import Responses
from features.synthetic.truth import Truth
from features.synthetic.vocabulary import (
    BAD_CHANNEL,
    CATEGORIES,
    CHANNELS,
    EVENT_CODE,
    EVENT_TYPES,
    NOKEY,
    NONE,
    REGIONS,
    SIGNUP_CHANNELS,
    TIERS,
    UPLIFT_TYPES,
)


class _Chunk(Population, Identities, Purchases, Campaigns, Responses, Consent, Truth):
    """Persons of one chunk: their latents, identifiers, history and truth."""

    def __init__(self, spec: ChunkSpec) -> None:
        self.spec = spec
        self.p = spec.params
        self.n = spec.n
        self.D = float(spec.days)
        self.rng = np.random.default_rng([spec.seed, spec.chunk])
        self.log = EventLog()
        season = seasonality(spec.start_epoch + np.arange(spec.days)) / 365.0
        self.cum_season = np.concatenate([[0.0], np.cumsum(season)])  # per year, day starts
        self.contacts: list[dict[str, np.ndarray]] = []
        self._persons()
        self._identifiers()

    def run(self) -> dict[str, int]:
        """Simulate the chunk's history and write its part files; returns the counts."""
        self._organic_purchases()
        self._organic_visits()
        self._consent_events()
        self._sweep()
        alive = self.op_alive
        self._log_purchases(self.op_person[alive], self.op_t[alive], self.op_online[alive], NONE)
        if self.induced:
            who, when, online, act = (np.concatenate(x) for x in zip(*self.induced, strict=True))
            self._log_purchases(who, when, online, act)
        return self._write()

    def _write(self) -> dict[str, int]:
        """Encode the chunk's events and truth and write its part files."""
        spec, n = self.spec, self.n
        cols = self.log.columns()
        ts_us = ts_us_of(spec, cols[1])
        # the history ends at D: later responses and purchases are cut off
        kept = np.flatnonzero(cols[1] < self.D)
        order = kept[np.argsort(ts_us[kept], kind="stable")]
        position = np.full(len(ts_us), -1, dtype=np.int64)  # an event's rank = its event_id
        position[order] = np.arange(len(order))
        rows, seq, bad_at, bad_kind = self._dirty(order, position, ts_us, cols[3])
        cols = [c[rows] for c in cols]
        ts_us = ts_us[rows]
        cols[2][bad_at[bad_kind == 0]] = BAD_CHANNEL
        cols[4][bad_at[bad_kind == 1]] = NOKEY
        cols[7][bad_at[bad_kind == 2]] *= -1.0
        cols[9][bad_at[bad_kind == 3]] = 1.5
        event_ids = hex_strings("", (np.int64(spec.chunk) << np.int64(40)) | seq)
        files = [self._write_events(cols, ts_us, event_ids)]
        del cols, event_ids
        files.append(self._write_customers())
        files.append(self._write_truth_customers())
        identity_rows, f = self._write_identity()
        files.append(f)
        contacts = self._contact_columns()
        contact_seq = position[contacts["row"]]
        by_time = np.argsort(contact_seq, kind="stable")
        contacts = {k: v[by_time] for k, v in contacts.items()}
        contact_ids = hex_strings("", (np.int64(spec.chunk) << np.int64(40)) | contact_seq[by_time])
        files.append(self._write_contacts(contacts, ts_us_of(spec, contacts["t"]), contact_ids))
        files.append(self._write_customer_actions())
        return {
            "customers": n,
            "identifiers": identity_rows,
            "events": len(ts_us),
            "contacts": len(contact_seq),
            "files": len(files),
            "dirty_rows": len(rows) - len(order),
        }

    def _dirty(
        self, order: np.ndarray, position: np.ndarray, ts_us: np.ndarray, etype: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows to write, with retried duplicates (same event_id) and malformed rows inserted.

        Returns the source row of each output row, its event sequence number, and the output
        positions and kinds (0 unknown channel, 1 bad key, 2 negative amount, 3 propensity 1.5)
        of the malformed rows.
        """
        rate, valid = self.spec.dirty_rate, len(order)
        empty = np.zeros(0, dtype=np.int64)
        if rate <= 0 or valid == 0:
            return order, np.arange(valid), empty, empty
        rng = self.rng
        dup = order[rng.choice(valid, rng.binomial(valid, rate))]
        n_bad = math.ceil(valid * rate / 5.0)
        kind = np.arange(n_bad) % 4
        bad = order[rng.choice(valid, n_bad)]
        for k, event_type in ((2, "purchase"), (3, "sent")):
            candidates = order[etype[order] == EVENT_CODE[event_type]]
            if len(candidates):
                bad = np.where(kind == k, rng.choice(candidates, n_bad), bad)
            else:
                kind = np.where(kind == k, 0, kind)
        extra = np.concatenate([dup, bad])
        extra_seq = np.concatenate([position[dup], valid + np.arange(n_bad)])
        extra_kind = np.concatenate([np.full(len(dup), -1), kind])
        by_time = np.argsort(ts_us[extra], kind="stable")
        extra, extra_seq, extra_kind = extra[by_time], extra_seq[by_time], extra_kind[by_time]
        # retries and malformed rows go right after the valid rows of the same time
        at = np.searchsorted(ts_us[order], ts_us[extra], side="right")
        rows = np.insert(order, at, extra)
        seq = np.insert(np.arange(valid), at, extra_seq)
        placed = at + np.arange(len(extra))
        return rows, seq, placed[extra_kind >= 0], extra_kind[extra_kind >= 0]

    def _write_events(self, cols: list[np.ndarray], ts_us: np.ndarray, ids: pa.Array) -> Path:
        """The contract's events table from the code columns."""
        person, _, channel, etype, key, link, action, amount, category, propensity = cols
        table = pa.Table.from_arrays(
            [
                ids,
                pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
                self._key_strings(key, person),
                self._key_strings(link, person),
                decode(channel, (*CHANNELS, "fax")),
                decode(etype, EVENT_TYPES),
                decode(action, [a.action_id for a in ACTIONS]),
                pa.array(amount, from_pandas=True),
                decode(category, CATEGORIES),
                pa.array(propensity, from_pandas=True),
            ],
            schema=EVENT_SCHEMA,
        )
        return self._write_table(table, "events")

    def _write_table(self, table: pa.Table, name: str) -> Path:
        """Write the chunk's part file of table `name`."""
        path = self.spec.out / name / f"part-{self.spec.chunk:05d}.parquet"
        pq.write_table(table, path)
        return path

    def _person_id(self, local: np.ndarray | None = None) -> np.ndarray:
        """Global person ids of local indices (all persons of the chunk by default)."""
        local = np.arange(self.n) if local is None else local
        return (self.spec.first_person + local).astype(np.int64)

    def _write_customers(self) -> Path:
        """The observable customers table, keyed by the crm key."""
        signup_date = np.floor(self.spec.start_epoch + self.signup_t).astype(np.int32)
        table = pa.table(
            {
                CUSTOMER_KEY: self.key_dictionary.slice(0, self.n),
                "age": pa.array(self.age),
                "region": decode(self.region, REGIONS),
                "loyalty_tier": decode(self.tier, TIERS),
                "signup_date": pa.array(signup_date, type=pa.date32()),
                "signup_channel": decode(self.signup_channel, SIGNUP_CHANNELS),
            }
        )
        return self._write_table(table, "customers")


def _run_chunk(spec: ChunkSpec) -> dict[str, int]:
    """Worker entry point: one chunk from persons to part files."""
    return _Chunk(spec).run()


def _prepare(out: Path) -> None:
    """Create the output folders; remove part files a previous world left there."""
    for name in (
        "events",
        "customers",
        "truth/identity",
        "truth/customers",
        "truth/contacts",
        "truth/customer_actions",
    ):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("part-*.parquet"):
            old.unlink()


def generate_world(
    out: Path,
    customers: int,
    days: int = 365,
    seed: int = 0,
    start: date = date(2025, 1, 1),
    workers: int = 2,
    dirty_rate: float = 0.0005,
    progress: bool = True,
    params: WorldParams | None = None,
) -> WorldSummary:
    """Write a synthetic world of `customers` persons over `days` days into `out`.

    The same seed and parameters give the same files whatever `workers` is.
    """
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= dirty_rate <= 0.1:
        raise ValueError(f"dirty_rate must be within [0, 0.1], got {dirty_rate}")
    began = time.perf_counter()
    params = params or WorldParams()
    out = Path(out)
    _prepare(out)
    if isinstance(start, datetime):
        start = start.date()
    start_epoch = (start - date(1970, 1, 1)).days
    wave_time, wave_action = campaign_schedule(seed, days)
    size = params.chunk_size
    specs = [
        ChunkSpec(
            out=out,
            seed=seed,
            chunk=i,
            first_person=i * size,
            n=min(size, customers - i * size),
            days=days,
            start_epoch=start_epoch,
            params=params,
            wave_time=wave_time,
            wave_action=wave_action,
            dirty_rate=dirty_rate,
        )
        for i in range(math.ceil(customers / size))
    ]
    totals = {
        "customers": 0,
        "identifiers": 0,
        "events": 0,
        "contacts": 0,
        "files": 0,
        "dirty_rows": 0,
    }
    bar = tqdm(total=customers, unit="customer", disable=not progress, desc="synth")
    with bar:
        if workers <= 1 or len(specs) == 1:
            for spec in specs:
                _add(totals, _run_chunk(spec))
                bar.update(spec.n)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(workers, len(specs)), mp_context=context
            ) as pool:
                futures = {pool.submit(_run_chunk, spec): spec for spec in specs}
                for future in as_completed(futures):
                    _add(totals, future.result())
                    bar.update(futures[future].n)
    _write_world_json(out, seed, customers, days, start, params, dirty_rate, wave_time, wave_action)
    totals["files"] += 1
    return WorldSummary(seconds=time.perf_counter() - began, **totals)


def _add(totals: dict[str, int], counts: dict[str, int]) -> None:
    """Add a chunk's counts to the totals."""
    for k, v in counts.items():
        totals[k] += v


def _write_world_json(
    out: Path,
    seed: int,
    customers: int,
    days: int,
    start: date,
    params: WorldParams,
    dirty_rate: float,
    wave_time: np.ndarray,
    wave_action: np.ndarray,
) -> None:
    """truth/world.json: how the world was made (seed, parameters, catalogue, schedule)."""
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    waves = [
        {
            "ts": (begin + timedelta(days=float(t))).isoformat(),
            "action_id": ACTIONS[a].action_id,
        }
        for t, a in zip(wave_time, wave_action, strict=True)
    ]
    world = {
        "generator": "features.synthetic",
        "seed": seed,
        "customers": customers,
        "days": days,
        "start": start.isoformat(),
        "end": (start + timedelta(days=days)).isoformat(),
        "horizon_days": params.horizon_days,
        "dirty_rate": dirty_rate,
        "params": asdict(params),
        "actions": actions_catalogue(),
        "waves": waves,
        "seasonality": seasonality_definition(),
        "categories": list(CATEGORIES),
        "uplift_types": list(UPLIFT_TYPES),
        "truth_tables": {
            "identity": "identifier -> person_id, identifier_type, role, shared",
            "customers": "person_id, crm_key, signup_ts, profile and every latent",
            "contacts": "per sent/holdout event: treated, propensity, p_response, "
            "p_purchase_treated, p_purchase_control, expected_value",
            "customer_actions": "per person x action if contacted at the end of the history "
            "(incremental, and its mean over the uplift-type draw given the other latents)",
        },
    }
    (out / "truth" / "world.json").write_text(json.dumps(world, indent=2))
