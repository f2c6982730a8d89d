"""Small vectorised helpers: logistic functions, hashing, ranges, row-wise choices, time stamps."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.synthetic.params import ChunkSpec
from features.synthetic.vocabulary import US_PER_DAY


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """The logistic function, without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def logistic_scale(sd_hours: float) -> float:
    """Scale (in days) of a logistic distribution with this standard deviation in hours."""
    return sd_hours / 24.0 * math.sqrt(3.0) / math.pi


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64, so distinct inputs give distinct keys."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hex_strings(prefix: str, values: np.ndarray) -> pa.StringArray:
    """Arrow strings `prefix` + 16 hex digits of each uint64, built without a Python loop."""
    n = len(values)
    pre = prefix.encode()
    width = len(pre) + 16
    digits = np.frombuffer(values.astype(">u8").tobytes().hex().encode(), dtype=np.uint8)
    buf = np.empty((n, width), dtype=np.uint8)
    buf[:, : len(pre)] = np.frombuffer(pre, dtype=np.uint8)
    buf[:, len(pre) :] = digits.reshape(n, 16)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf)).cast(
        pa.string()
    )


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[i], hi[i]) over i."""
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(n) - n
    return np.arange(total, dtype=np.int64) + np.repeat(lo - starts, n)


def choice_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def wrapped_hour(rng: np.random.Generator, pref_hour: np.ndarray, sd_hours: float) -> np.ndarray:
    """Fraction of the day around the preferred hour (wrapped logistic, CDF in closed form)."""
    u = rng.random(len(pref_hour))
    u = np.clip(u, 1e-12, 1.0 - 1e-12)
    return (pref_hour / 24.0 + logistic_scale(sd_hours) * np.log(u / (1.0 - u))) % 1.0


def at_preferred_hour(
    rng: np.random.Generator, t: np.ndarray, pref_hour: np.ndarray, min_days: float, extra: int
) -> np.ndarray:
    """First time after t + min_days at the person's preferred hour (+-1 h), plus 0..extra days."""
    base = t + min_days
    out = np.floor(base) + wrapped_hour(rng, pref_hour, 1.0)
    out = np.where(out <= base, out + 1.0, out)
    return out + rng.integers(0, extra + 1, len(t))


def ts_us_of(spec: ChunkSpec, t: np.ndarray) -> np.ndarray:
    """Days since the start as UTC microseconds since the epoch."""
    return spec.start_epoch * US_PER_DAY + np.round(t * US_PER_DAY).astype(np.int64)


def decode(codes: np.ndarray, vocabulary: tuple[str, ...] | list[str]) -> pa.Array:
    """Strings of small integer codes; negative codes give null."""
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    indices = (
        pa.array(np.where(missing, 0, codes), mask=missing) if missing.any() else pa.array(codes)
    )
    return pc.take(pa.array(list(vocabulary), type=pa.string()), indices)


def logit(x: float) -> float:
    """Inverse of the logistic function."""
    return math.log(x / (1.0 - x))
