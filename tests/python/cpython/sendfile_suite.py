"""Runs CPython's own test.test_asyncio.test_sendfile (the running
interpreter's) in this process, with zcsend.install() applied (--zcsend) or
stock, and writes what happened as JSON to the file given as argument.

    python sendfile_suite.py OUT.json [--zcsend]

With --zcsend: install() before the suite with no loop running (every stock
asyncio and uvloop loop class), uninstall() after it; each test's record says
how many transfers zcsend started during it (zcsend.stats()["started"]).
Run it in a scratch directory: the suite writes its data file in the cwd."""
import asyncio
import importlib
import importlib.util
import json
import sys
import unittest

MODULE = "test.test_asyncio.test_sendfile"


def _outcome_recorder(started):
    class Recorder(unittest.TextTestResult):
        """Every test's outcome, and the zcsend transfers it started."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records = {}

        def _record(self, test, outcome, detail=None):
            rec = self.records.setdefault(test.id(), {})
            if outcome == "passed" and "outcome" in rec:
                return  # a subtest already failed it
            rec["outcome"] = outcome
            if detail:
                rec["detail"] = detail

        def startTest(self, test):
            self._started = started()
            super().startTest(test)

        def stopTest(self, test):
            super().stopTest(test)
            rec = self.records.setdefault(test.id(), {"outcome": "passed"})
            rec["zcsend_started"] = started() - self._started

        def addSuccess(self, test):
            super().addSuccess(test)
            self._record(test, "passed")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._record(test, "failed", self.failures[-1][1])

        def addError(self, test, err):
            super().addError(test, err)
            # module and class fixtures report as pseudo-tests: keep them too
            self._record(test, "error", self.errors[-1][1])

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._record(test, "skipped", reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._record(test, "expected failure")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._record(test, "unexpected success")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = "failed" if issubclass(err[0], test.failureException) else "error"
                self._record(test, kind, self._exc_info_to_string(err, test))
    return Recorder


def main():
    out, with_zcsend = sys.argv[1], "--zcsend" in sys.argv[2:]
    report = {"python": sys.version.split()[0], "zcsend": with_zcsend}
    try:
        found = importlib.util.find_spec(MODULE) is not None
    except ModuleNotFoundError:  # no test package, or no test.test_asyncio
        found = False
    if not found:
        report["missing"] = f"{sys.executable} has no {MODULE} (its stdlib test package is not installed)"
        with open(out, "w") as f:
            json.dump(report, f)
        return
    module = importlib.import_module(MODULE)
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    report["total"] = suite.countTestCases()

    started = lambda: 0
    if with_zcsend:
        import zcsend
        stock = {cls: vars(cls).get("sendfile") for cls in (asyncio.BaseEventLoop, _uvloop_loop())
                 if cls is not None}
        zcsend.install()  # no loop running: the loop classes
        for cls in stock:
            assert hasattr(vars(cls).get("sendfile"), "__zcsend_installed__"), f"install() missed {cls}"
        started = lambda: zcsend.stats()["started"]
        before = zcsend.stats()
    try:
        runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2,
                                         resultclass=_outcome_recorder(started))
        result = runner.run(suite)
    finally:
        if with_zcsend:
            after = zcsend.stats()
            zcsend.uninstall()
            report["restored"] = all(vars(cls).get("sendfile") is fn for cls, fn in stock.items())
            report["stats"] = {k: after[k] - before[k] for k in after if k != "active"}
    report["ran"] = result.testsRun
    report["tests"] = result.records
    with open(out, "w") as f:
        json.dump(report, f, indent=1)


def _uvloop_loop():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


if __name__ == "__main__":
    main()
