"""Spark engine: the batch engine's feature tables on Spark, from the same SQL and definitions.

`features.store.batch.base_aggregates_sql` generates the point-in-time base aggregates for DuckDB or
Spark SQL from `FeatureSet.base`; this module runs the Spark flavour through `spark.sql` on a
registered temporary view and derives the features with the shared `FeatureSet.derive_frame`,
so the numbers are the DuckDB engine's (a parity test proves it).

Two ways out:

* `snapshot`, `at`, `base_snapshot`, `base_at` return pandas frames shaped exactly like
  `BatchEngine`'s (the result is collected on the driver: one row a customer or query point);
* `snapshot_df`, `at_df` return lazy Spark DataFrames whose derived features are computed on the
  executors (`mapInPandas`), to write a feature table of millions of customers without
  collecting it.

pyspark is imported here only: the rest of the package does not need it. Spark 4 needs Java 17+.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.ingest.contract import AMOUNT, CATEGORY, CHANNEL, CUSTOMER_ID, EVENT_TYPE, TS
from features.store.batch import (
    AS_OF,
    AS_OF_US,
    QUERY_ID,
    SPARK,
    FeatureEngine,
    base_aggregates_sql,
    to_us,
)
from features.store.definitions import FeatureSet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

MIN_JAVA = 17
# the columns base_aggregates_sql reads
_FEATURE_INPUTS = [CUSTOMER_ID, TS, CHANNEL, EVENT_TYPE, AMOUNT, CATEGORY]


def java_version(java: str | None = None) -> int:
    """Major version of the Java runtime Spark would start (JAVA_HOME's, else `java` on PATH)."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise RuntimeError(
            f"Spark needs a Java runtime ({MIN_JAVA} or later) and none was found: set JAVA_HOME "
            "or put `java` on PATH (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        raise RuntimeError(f"could not read the Java version from `{java} -version`: {text!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    return major


def local_spark(
    app_name: str = "nba",
    *,
    master: str = "local[2]",
    driver_memory: str = "1g",
    shuffle_partitions: int = 4,
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """A local-mode SparkSession for a small machine: two cores, UTC, loopback only, no UI.

    Raises a RuntimeError naming the problem when no Java 17+ runtime is available. An already
    running session is returned as it is (only its SQL settings are changed).
    """
    major = java_version()
    if major < MIN_JAVA:
        raise RuntimeError(f"Spark 4 needs Java {MIN_JAVA} or later; the Java found is {major}")
    # Python workers (mapInPandas) must run this interpreter, which has numpy and pandas;
    # and Spark must not look up the machine's hostname on the network.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from pyspark.sql import SparkSession

    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(shuffle_partitions),
        "spark.driver.memory": driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    settings.update(conf or {})
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def load_events(spark: SparkSession, path: str | Path, view: str | None = "events") -> DataFrame:
    """The event store (parquet: one file or a folder of files) as a DataFrame.

    Registered as the temporary view `view` (unless None), the name `SparkEngine` reads. The
    store is `DataDir(root).store / "events.parquet"`; any parquet with the contract's columns
    plus customer_id will do.
    """
    path = str(path)
    if "://" not in path and not Path(path).exists():  # local; hdfs:// or s3a:// go to Spark
        raise FileNotFoundError(f"event store {path} does not exist (run `nba ingest` first)")
    events = spark.read.parquet(path)
    missing = [c for c in _FEATURE_INPUTS if c not in events.columns]
    if missing:
        raise ValueError(f"{path}: the event store has no column(s) {missing}")
    if view is not None:
        events.createOrReplaceTempView(view)
    return events


class SparkEngine(FeatureEngine):
    """Computes feature tables on Spark over the event store; mirrors `BatchEngine`."""

    def __init__(
        self,
        fs: FeatureSet,
        spark: SparkSession,
        events: str = "events",
        customers: str | None = None,
    ):
        self.fs = fs
        self.spark = spark
        self.events = events
        self.customers = customers
        self._profile: pd.DataFrame | None = None

    # --- Spark DataFrames (lazy, distributed) -------------------------------------------------

    def base_snapshot_df(self, as_of: pd.Timestamp) -> DataFrame:
        """Base aggregates of every customer with an event before `as_of` (lazy)."""
        sql = base_aggregates_sql(self.fs, self.events, SPARK, as_of_us=int(to_us(as_of)))
        return self.spark.sql(sql)

    def snapshot_df(self, as_of: pd.Timestamp) -> DataFrame:
        """customer_id, as_of and the features of every customer active before `as_of`, derived
        on the executors. Profile columns are not joined (join the customers table if needed)."""
        from pyspark.sql import types as T

        as_of_us = int(to_us(as_of))
        fs = self.fs
        stamp = pd.Timestamp(as_of_us, unit="us", tz="UTC")
        schema = T.StructType(
            [
                T.StructField(CUSTOMER_ID, T.StringType()),
                T.StructField(AS_OF, T.TimestampType()),
                *[T.StructField(n, T.DoubleType()) for n in fs.names],
            ]
        )

        def derive(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for base in batches:
                feats = fs.derive_frame(base, np.full(len(base), as_of_us, dtype=np.int64))
                feats.insert(0, AS_OF, stamp)
                feats.insert(0, CUSTOMER_ID, base[CUSTOMER_ID].astype(object).to_numpy())
                yield feats

        return self.base_snapshot_df(as_of).mapInPandas(derive, schema)

    def at_df(self, queries: DataFrame) -> DataFrame:
        """Features at each query point of a Spark DataFrame with query_id (any type),
        customer_id and as_of (timestamp): query_id, customer_id, as_of and the features (lazy).
        """
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        fs = self.fs
        q = queries.select(
            F.col(QUERY_ID),
            F.col(CUSTOMER_ID).cast("string").alias(CUSTOMER_ID),
            F.col(AS_OF).cast("timestamp").alias(AS_OF),
            F.unix_micros(F.col(AS_OF).cast("timestamp")).alias(AS_OF_US),
        )
        view = _temp_name("queries")
        q.createOrReplaceTempView(view)
        base = self.spark.sql(base_aggregates_sql(fs, self.events, SPARK, queries=view))
        joined = q.join(base, on=QUERY_ID, how="left")
        key_field = q.schema[QUERY_ID]
        schema = T.StructType(
            [
                key_field,
                T.StructField(CUSTOMER_ID, T.StringType()),
                T.StructField(AS_OF, T.TimestampType()),
                *[T.StructField(n, T.DoubleType()) for n in fs.names],
            ]
        )

        def derive(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for part in batches:
                feats = fs.derive_frame(part, part[AS_OF_US].to_numpy(dtype=np.int64))
                feats.insert(0, AS_OF, part[AS_OF].to_numpy())
                feats.insert(0, CUSTOMER_ID, part[CUSTOMER_ID].to_numpy())
                feats.insert(0, QUERY_ID, part[QUERY_ID].to_numpy())
                yield feats

        # the view stays registered while the lazy plan may run; it is resolved at analysis,
        # so dropping it now is safe
        result = joined.mapInPandas(derive, schema)
        self.spark.catalog.dropTempView(view)
        return result

    # --- pandas frames, shaped like BatchEngine's --------------------------------------------

    def profile_table(self) -> pd.DataFrame | None:
        if self.customers is None:
            return None
        return self.spark.table(self.customers).toPandas()

    def base_snapshot(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """Base aggregates of every customer with an event before `as_of`, keyed by customer_id."""
        return _numeric(self.base_snapshot_df(as_of).toPandas(), CUSTOMER_ID)

    def base_at(self, queries: pd.DataFrame) -> pd.DataFrame:
        """Base aggregates for query points (query_id, customer_id, as_of_us), keyed by query_id."""
        from pyspark.sql import types as T

        schema = T.StructType(
            [
                T.StructField(QUERY_ID, T.LongType(), nullable=False),
                T.StructField(CUSTOMER_ID, T.StringType()),
                T.StructField(AS_OF_US, T.LongType(), nullable=False),
            ]
        )
        q = pd.DataFrame(
            {
                QUERY_ID: queries[QUERY_ID].to_numpy(dtype=np.int64),
                CUSTOMER_ID: queries[CUSTOMER_ID].astype(object).to_numpy(),
                AS_OF_US: queries[AS_OF_US].to_numpy(dtype=np.int64),
            }
        )
        view = _temp_name("queries")
        self.spark.createDataFrame(q, schema=schema).createOrReplaceTempView(view)
        try:
            sql = base_aggregates_sql(self.fs, self.events, SPARK, queries=view)
            return _numeric(self.spark.sql(sql).toPandas(), QUERY_ID)
        finally:
            self.spark.catalog.dropTempView(view)


def _temp_name(what: str) -> str:
    return f"_nba_{what}_{uuid.uuid4().hex[:12]}"


def _numeric(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Base aggregates as float64 (NaN where no event matched), like DuckDB's `.df()` gives."""
    values = frame.drop(columns=[key]).astype(np.float64)
    return pd.concat([frame[[key]], values], axis=1)
