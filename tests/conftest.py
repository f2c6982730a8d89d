"""Test-wide settings, read before any module compiles its loops.

numba does not check array bounds: an index past an array's end reads whatever memory lies
there, and a test may pass by luck. Under test the compiled loops check their bounds (an
IndexError instead), cached apart from the unchecked builds the product runs.
"""

import os
import tempfile

os.environ.setdefault("NUMBA_BOUNDSCHECK", "1")
os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "nba-numba-boundscheck")
)

import uuid  # noqa: E402

import pytest  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from features.config import DataConfig, OnlineStoreConfig  # noqa: E402
from features.store.definitions import FeatureConfig, FeatureSet  # noqa: E402
from features.store.online_store import OnlineStore, OnlineStoreBase  # noqa: E402
from features.store.redis_online_store import RedisOnlineStore  # noqa: E402

_FS = FeatureSet(DataConfig(), FeatureConfig())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One Debian redis-server for the session (AOF, fsync on every write), on loopback."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_config(redis_server) -> OnlineStoreConfig:
    """The Redis backend under a namespace of this test's own."""
    return OnlineStoreConfig(
        backend="redis", url=redis_server.url, namespace=f"t{uuid.uuid4().hex[:12]}"
    )


BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path):
    """`opener(name="online", fs=FS, **kw)` opens the store `name` of the backend under test;
    the same name opens the same store again (a restart)."""
    if request.param == "sqlite":

        def open_sqlite(
            name: str = "online", fs: FeatureSet | None = None, **kw
        ) -> OnlineStoreBase:
            return OnlineStore(tmp_path / f"{name}.db", fs or _FS, **kw)

        open_sqlite.spec = lambda name: {"path": str(tmp_path / f"{name}.db")}
        return open_sqlite
    cfg = request.getfixturevalue("redis_config")

    def open_redis(name: str = "online", fs: FeatureSet | None = None, **kw) -> OnlineStoreBase:
        return RedisOnlineStore(
            cfg.model_copy(update={"namespace": f"{cfg.namespace}-{name}"}), fs or _FS, **kw
        )

    open_redis.spec = lambda name: {"url": cfg.url, "namespace": f"{cfg.namespace}-{name}"}
    return open_redis
