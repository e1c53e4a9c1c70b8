"""CPython's own loop.sendfile tests (test.test_asyncio.test_sendfile, from the
running interpreter's stdlib) pass with zcsend.install() applied: asyncio's
answers for what zcsend doesn't take (a Mock transport, UDP, a loop whose
_sendfile_native is its own), zcsend's transfers for the rest.

The suite runs in a child interpreter (sendfile_suite.py under cpython/): once
stock, once with install() at class level (uninstalled after it), and the two
are compared test by test."""
import json
import os
import subprocess
import sys

import pytest

SUITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython", "sendfile_suite.py")

# tests that must reach the loop's own sendfile, never zcsend: they override
# _sendfile_native on the loop, or pass a Mock transport
DELEGATED = {"test_sendfile_force_fallback", "test_sendfile_force_unsupported_native",
             "test_sendfile_fallback_close_peer_in_the_middle_of_receiving",
             "test_sendfile_no_fallback_for_fallback_transport"}
# plain TCP and TLS transfers on stock loops: zcsend's
ROUTED = {"test_sendfile", "test_sendfile_ssl", "test_sendfile_partial", "test_sendfile_ssl_partial"}


def run_suite(tmp_path, with_zcsend):
    out = tmp_path / f"{'zcsend' if with_zcsend else 'stock'}.json"
    cwd = tmp_path / f"cwd-{'zcsend' if with_zcsend else 'stock'}"
    cwd.mkdir()  # the suite writes its data file in the cwd
    cmd = [sys.executable, SUITE, str(out)] + (["--zcsend"] if with_zcsend else [])
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and out.exists(), f"{cmd} exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text()), proc.stderr


@pytest.mark.asyncio_only("CPython's tests make their own asyncio loops: one run covers them")
def test_cpython_sendfile_suite_with_zcsend_installed(tmp_path):
    stock, _ = run_suite(tmp_path, with_zcsend=False)
    if "missing" in stock:
        pytest.skip(stock["missing"])
    zc, log = run_suite(tmp_path, with_zcsend=True)

    # every test of the module ran, in both runs
    assert stock["ran"] == stock["total"] == len(stock["tests"]) > 0
    assert zc["ran"] == zc["total"] == stock["total"]
    assert zc["tests"].keys() == stock["tests"].keys()

    # each passes, or is skipped (or an expected failure) exactly where stock asyncio's is
    bad = {}
    for test, rec in zc["tests"].items():
        outcome, stock_outcome = rec["outcome"], stock["tests"][test]["outcome"]
        if outcome == "passed" or (outcome == stock_outcome and outcome in ("skipped", "expected failure")):
            continue
        bad[test] = f"{outcome} (stock: {stock_outcome})\n{rec.get('detail', '')}"
    passed = sum(rec["outcome"] == "passed" for rec in zc["tests"].values())
    assert not bad, f"{passed} of {zc['total']} passed with zcsend installed:\n" + "\n".join(
        f"{t}: {why}" for t, why in bad.items())

    # uninstall() gave the loop classes their own sendfile back
    assert zc["restored"]

    # zcsend did the transfers it should, and only those
    by_name = {}
    for test, rec in zc["tests"].items():
        by_name.setdefault(test.rsplit(".", 1)[1], []).append((test, rec))
    routed = [(t, rec) for name in ROUTED for t, rec in by_name.get(name, ()) if rec["outcome"] == "passed"]
    assert routed, f"none of {sorted(ROUTED)} ran"
    for test, rec in routed:
        assert rec["zcsend_started"] >= 1, f"{test} didn't go through zcsend"
    for name in DELEGATED:
        for test, rec in by_name.get(name, ()):
            assert rec["zcsend_started"] == 0, f"{test} went through zcsend, not the loop's own sendfile"
    assert zc["stats"]["started"] >= len(routed)
