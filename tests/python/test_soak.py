"""The cross-talk soak, briefly: concurrent transfers with random faults and fds
reused at once, every byte checked (tests/python/soak.py says how). Each loop kind
runs it over TCP, a Unix socket and TLS for ZCSEND_SOAK_SECONDS (1 s) each, longer
until 5 server faults have landed (up to 4x: most land after a small send is done);
`scripts/soak.sh` is the long run."""
import os

import pytest

import zcsend
from soak import Corpus, run_mode

SECONDS = float(os.environ.get("ZCSEND_SOAK_SECONDS", "1.0"))
SEED = os.environ.get("ZCSEND_SOAK_SEED")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c = Corpus(str(tmp_path_factory.mktemp("soak")))
    yield c
    c.close()


@pytest.mark.parametrize("net", ["tcp", "unix", "tls"])
def test_soak(corpus, loop_kind, net):
    """No byte reaches a peer that didn't ask for it, every count is exact, every
    transfer ends, and fds and zcsend.stats()['active'] are back where they were."""
    r = run_mode(f"{loop_kind}-{net}", corpus, SECONDS, seed=None if SEED is None else int(SEED),
                 hang_timeout=15, read_timeout=15, min_faults=5)
    assert not r.failures, r.summary()
    assert r.fds[1] <= r.fds[0] and r.active == 0, r.summary()
    assert r.c["transfers started"] >= 30, r.summary()  # it did run (TLS in debug mode: ~80 a second)
    assert sum(v for k, v in r.c.items() if k.startswith("fault ")) >= 5, r.summary()
    assert zcsend.stats()["active"] == 0
