"""The column encoding shared by training and serving: a frame's columns read once into numpy
(`FrameArrays`) and each model's input columns and categorical levels fixed at fit time
(`FrameEncoder`), so a frame built at serving time is read exactly as the training frame was.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Up to this many rows (a real-time decision), per-call overheads dominate and the encoder takes
# the paths with the fewest pandas calls; above it, the paths whose cost grows slowest with rows.
FEW_ROWS = 64


@dataclass
class FrameArrays:
    """A frame's columns read once into numpy: float64 columns side by side in one matrix, every
    other column (text, integers, dates) as its own array.

    Several models' encoders then take their matrices from the same arrays, and a decision's
    (customer, action) pairs are rows taken from them, without pandas' per-call costs (about a
    millisecond per column selection, where LightGBM predicts a row in 0.1 ms).
    """

    floats: np.ndarray  # rows x float columns, column-major
    float_position: dict[str, int]
    others: dict[str, np.ndarray | pd.api.extensions.ExtensionArray]
    # the rows of `floats` these arrays hold, if taken: the encoder gathers them straight into
    # its matrix, instead of a copy of the taken rows first (a decision's pairs repeat rows)
    rows: np.ndarray | None = None
    # matrices already built from these arrays, by encoder: a bundle's response, baseline and
    # effect models are usually fitted on the same columns and levels and share one
    matrices: list[tuple[FrameEncoder, np.ndarray]] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, frame: pd.DataFrame, columns: list[str] | None = None) -> FrameArrays:
        columns = list(frame.columns) if columns is None else columns
        kinds = dict(zip(frame.columns, frame.dtypes, strict=True))
        _require_columns(columns, kinds)
        floats = [c for c in columns if kinds[c] == np.float64]
        others = {c: _raw(frame[c]) for c in columns if kinds[c] != np.float64}
        block = np.empty((len(frame), len(floats)), order="F")
        if len(frame) <= FEW_ROWS:
            block[:] = frame[floats].to_numpy(dtype=np.float64)
        else:  # a copy per column: the whole block's to_numpy is 4x slower on wide frames
            for j, col in enumerate(floats):
                block[:, j] = frame[col].to_numpy(dtype=np.float64)
        return cls(block, {c: j for j, c in enumerate(floats)}, others)

    def __len__(self) -> int:
        return self.floats.shape[0] if self.rows is None else len(self.rows)

    @property
    def columns(self) -> list[str]:
        return [*self.float_position, *self.others]

    def column(self, name: str) -> np.ndarray:
        if name in self.float_position:
            values = self.floats[:, self.float_position[name]]
            return values if self.rows is None else values[self.rows]
        return self.others[name]

    def take(self, rows: np.ndarray) -> FrameArrays:
        """These rows (positions, repeats allowed), as a decision's pairs take their customers."""
        taken = rows if self.rows is None else self.rows[rows]
        others = {c: v[rows] for c, v in self.others.items()}
        return FrameArrays(self.floats, self.float_position, others, taken)

    def with_columns(self, values: dict[str, np.ndarray | object]) -> FrameArrays:
        """These arrays with columns added or replaced (a scalar fills every row)."""
        floats, position = self.floats, dict(self.float_position)
        keep = [c for c in position if c not in values]
        if len(keep) < len(position):  # a replaced float column moves to `others`
            floats = self.floats[:, [position[c] for c in keep]]
            position = {c: j for j, c in enumerate(keep)}
        others = dict(self.others)
        for name, v in values.items():
            others[name] = np.broadcast_to(np.asarray(v), (len(self),))
        return FrameArrays(floats, position, others, self.rows)


def _require_columns(wanted: list[str], present) -> None:
    """Fail naming the model's columns an input lacks (the first ten)."""
    present = set(present)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(f"input lacks the model's columns {missing[:10]}")


def _raw(s: pd.Series) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """A non-float column as an array: dates keep their time zone (a reason shows the date;
    numpy would hold each as a Timestamp object), the rest as numpy."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.array
    return s.to_numpy()


def column_values(X: pd.DataFrame | FrameArrays, name: str) -> np.ndarray:
    """One column of a frame or of its arrays, as numpy."""
    return X.column(name) if isinstance(X, FrameArrays) else X[name].to_numpy()


def row_index(X: pd.DataFrame | FrameArrays) -> pd.Index | None:
    """A frame's row labels; arrays have positions only."""
    return X.index if isinstance(X, pd.DataFrame) else None


@dataclass
class FrameEncoder:
    """Column order and categorical levels of the training frame, applied to any later frame."""

    columns_: list[str] = field(default_factory=list)
    categories_: dict[str, list] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame) -> FrameEncoder:
        self.columns_ = list(frame.columns)
        self.categories_ = {}
        for col in self.columns_:
            s = frame[col]
            numeric = pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
            if not (numeric or pd.api.types.is_datetime64_any_dtype(s)):
                levels = s.astype("category").cat.categories
                self.categories_[col] = sorted(str(v) for v in levels)
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require_columns(self.columns_, frame.columns)
        # the frame LightGBM is fitted on (categoricals as pandas categories, which it detects);
        # prediction reads `matrix` instead. Float columns pass through without a copy.
        out: dict[str, object] = {}
        for col in self.columns_:
            s = frame[col]
            if col in self.categories_:
                out[col] = _categorical(s, self.categories_[col])
            elif s.dtype == np.float64:
                out[col] = s.to_numpy()
            else:
                out[col] = _numeric(s)
        return pd.DataFrame(out, index=frame.index, copy=False)

    def matrix(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """The float64 matrix LightGBM predicts from, the same numbers `transform` gives it:
        categoricals as codes of the fitted levels (NaN if missing or unseen), dates as days.

        Prediction goes from here straight to the booster: LightGBM's and scikit-learn's
        handling of a frame cost about 100 times the prediction itself for one customer. From
        arrays, the matrix is built once and kept there for every model with an equal encoder.
        """
        if isinstance(X, pd.DataFrame):
            X = FrameArrays.of(X, self.columns_)  # checks the columns as it reads them
        for encoder, built in X.matrices:
            if encoder == self:
                return built
        plain, categorical, numeric = self._layout(X)
        # column-major: each column is one contiguous copy, and LightGBM reads a Fortran-ordered
        # matrix without copying it again
        out = np.empty((len(X), len(self.columns_)), order="F")
        rows = slice(None) if X.rows is None else X.rows
        if len(X) <= FEW_ROWS:
            into, source = plain
            out[:, into] = X.floats[rows][:, source]
        else:  # column by column: a scattered block copy is several times slower on many rows
            for j, source in zip(*plain, strict=True):
                out[:, j] = X.floats[rows, source]
        for j, col in categorical:
            codes = _level_codes(X.column(col), self.categories_[col])
            out[:, j] = np.where(codes >= 0, codes, np.nan)
        for j, col in numeric:
            out[:, j] = _numeric_values(X.column(col))
        out.flags.writeable = False  # shared by every model with this encoder
        X.matrices.append((self, out))
        return out

    def _layout(self, X: FrameArrays) -> tuple[tuple[np.ndarray, np.ndarray], list, list]:
        """Where each model column comes from in arrays laid out as X: (matrix columns, float
        block columns) copied as they are, categoricals, other numbers (dates). Worked out once
        per layout: a real-time request's arrays have the same layout every time."""
        key = (tuple(X.float_position), tuple(X.others))
        layouts = self.__dict__.setdefault("_layouts", {})
        if key not in layouts:
            _require_columns(self.columns_, X.columns)
            plain = [
                (j, X.float_position[c])
                for j, c in enumerate(self.columns_)
                if c in X.float_position and c not in self.categories_
            ]
            into, source = np.array(plain, dtype=np.int64).reshape(-1, 2).T
            categorical = [(j, c) for j, c in enumerate(self.columns_) if c in self.categories_]
            numeric = [
                (j, c)
                for j, c in enumerate(self.columns_)
                if c not in self.categories_ and c not in X.float_position
            ]
            layouts[key] = ((into, source), categorical, numeric)
        return layouts[key]

    def __getstate__(self) -> dict:
        """Pickled without the layouts (a cache of `_layout`, rebuilt when needed)."""
        state = self.__dict__.copy()
        state.pop("_layouts", None)
        return state


def _numeric(s: pd.Series) -> np.ndarray:
    """A non-categorical column as float64; a date is a number to a tree (days since 1970), not
    thousands of categories."""
    if pd.api.types.is_datetime64_any_dtype(s):
        # UTC instants in the column's own unit (a naive date is taken as UTC); NaT gives NaN
        utc = s.to_numpy(dtype=f"datetime64[{s.array.unit}]")
        return (utc - np.datetime64(0, "s")) / np.timedelta64(1, "D")
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)


def _numeric_values(values: np.ndarray | pd.api.extensions.ExtensionArray) -> np.ndarray:
    """`_numeric` of a column's array: numpy times straight (a real-time row's profile date),
    anything else through a Series."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        return (values - np.datetime64(0, "s")) / np.timedelta64(1, "D")
    return _numeric(pd.Series(values))


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`pd.factorize` (codes, distinct values in order of appearance, -1 for missing); a few
    rows (a real-time decision's pairs) by a dict, where pandas costs tens of microseconds."""
    if len(values) > FEW_ROWS:
        return pd.factorize(values)
    distinct: dict[object, int] = {}
    codes = [-1 if pd.isna(v) else distinct.setdefault(v, len(distinct)) for v in values]
    return np.array(codes, dtype=np.intp), np.array(list(distinct), dtype=object)


@functools.lru_cache(maxsize=1024)
def _positions(levels: tuple[str, ...]) -> dict[str, int]:
    return {level: i for i, level in enumerate(levels)}


def _level_codes(values: pd.Series | np.ndarray, levels: list[str]) -> np.ndarray:
    """Each value's position in the fitted levels (compared as strings), -1 if missing or unseen.

    Factorising first converts only the few distinct values, not every row; a few rows (one
    customer's decision) are looked up directly, where factorising costs more than the lookup.
    """
    lookup = _positions(tuple(levels))
    if len(values) <= FEW_ROWS:
        return np.array(
            [-1 if pd.isna(v) else lookup.get(str(v), -1) for v in values], dtype=np.int64
        )
    codes, uniques = pd.factorize(values)
    position = [lookup.get(str(v), -1) for v in uniques]
    position = np.array([*position, -1])  # factorize's -1 (missing) picks this last entry
    return position[codes]


def _categorical(s: pd.Series, levels: list[str]) -> pd.Categorical:
    """`s` coded against the fitted levels; unseen values become NaN."""
    return pd.Categorical.from_codes(_level_codes(s, levels), categories=levels)
