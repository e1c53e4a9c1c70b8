"""What zcsend makes of a transport (decided once per type, by capability where
asyncio offers one), and what importing zcsend changes in asyncio."""
import asyncio
import gc
import json
import os
import subprocess
import sys
from unittest import mock

import pytest

import zcsend
from zcsend import _transports
from conftest import LOOP, Pair, run


def test_each_transport_type_gets_its_hold_once(kind, tmp_path):
    """asyncio's TCP/Unix: SelectorHold; uvloop's: FlushHold; TLS on either
    loop: WriteHold. The type is classified on first sight, then looked up."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    expected = {"tls": _transports.WriteHold}.get(
        kind, _transports.SelectorHold if LOOP["kind"] == "asyncio" else _transports.FlushHold)

    async def main():
        async with Pair(kind) as p:
            t = p.server.transport
            assert _transports.kind_of(t).transport and _transports.kind_of(t).hold is expected
            assert _transports.resolve(p.server) is t
            assert id(type(t)) in _transports._kinds
            with mock.patch.object(_transports, "_classify", side_effect=AssertionError("classified again")):
                reading = asyncio.ensure_future(p.read_all(200_000))
                with open(path, "rb") as f:
                    assert await zcsend.sendfile(p.server, f) == 100_000
                    assert await zcsend.sendfile(t, f, 0) == 100_000
                assert (await reading)[1] == 200_000
    run(main())


def test_pipes_udp_and_non_transports():
    """A write pipe takes the write path, UDP and asyncio's read pipe none
    (zcsend says so with the error install() hands to the loop's own sendfile); a
    Mock is no transport, one specced as a transport is one, as isinstance says."""
    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        wt, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb"))
        rt, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb"))
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            assert _transports.kind_of(wt).hold is _transports.WriteHold
            assert isinstance(_transports.hold_for(loop, wt), _transports.WriteHold)
            # uvloop's read pipe is a UVStream with a write() of its own: classified
            # like its write pipe, as before classification was cached
            for t in (rt, udp) if LOOP["kind"] == "asyncio" else (udp,):
                assert _transports.kind_of(t).transport
                with pytest.raises(_transports._NotForZcsend, match="^sendfile is not supported for transport"):
                    _transports.hold_for(loop, t)
        finally:
            for t in (wt, rt, udp):
                t.close()
            await asyncio.sleep(0)
    run(main())

    assert not _transports.kind_of(mock.Mock()).transport
    with pytest.raises(TypeError, match="^expected an asyncio transport or StreamWriter, got Mock"):
        _transports.resolve(mock.Mock())
    specced = mock.Mock(spec=asyncio.Transport)
    assert _transports.kind_of(specced).transport
    assert _transports.resolve(specced) is specced


@pytest.mark.asyncio_only("no loop involved")
def test_the_cache_keeps_no_type_alive():
    """Every Mock is an instance of a class of its own: classifying thousands
    of them leaves nothing behind once they are gone, and a transport class
    made at run time goes when its last user does."""
    gc.collect()
    before = len(_transports._kinds)
    for _ in range(2000):
        _transports.kind_of(mock.Mock())
    made = type("MadeTransport", (asyncio.Transport,), {})
    assert _transports.kind_of(made()).hold is _transports.WriteHold
    del made
    gc.collect()
    assert len(_transports._kinds) == before


# What importing zcsend changes in asyncio: every class's own namespace and
# every module's, in a fresh interpreter, before and after `import zcsend`.
# Every asyncio submodule (and uvloop's) is imported before the first snapshot,
# so only what zcsend sets shows.
_SNAPSHOT = r"""
import asyncio, importlib, json, pkgutil, sys
for m in pkgutil.iter_modules(asyncio.__path__, "asyncio."):
    try:
        importlib.import_module(m.name)
    except ImportError:
        pass  # windows_events and the like
try:
    import uvloop, uvloop.loop
except ImportError:
    pass

classes = set()

def snapshot():
    seen = {}
    for name, module in sorted(sys.modules.items()):
        if not (name == "asyncio" or name.startswith(("asyncio.", "uvloop"))):
            continue
        seen[name] = {k: id(v) for k, v in vars(module).items()}
        for k, v in vars(module).items():
            if isinstance(v, type) and v.__module__ == name:
                seen[f"{name}.{v.__qualname__}"] = {a: id(x) for a, x in vars(v).items()}
                classes.add(v)
    return seen

before = snapshot()
import zcsend
after = snapshot()
diff = []
for where in sorted(set(before) | set(after)):
    b, a = before.get(where, {}), after.get(where, {})
    for attr in sorted(set(b) | set(a)):
        if b.get(attr) != a.get(attr):
            how = "added" if attr not in b else "removed" if attr not in a else "changed"
            diff.append([how, f"{where}.{attr}"])
fn = zcsend._core._sendfile_zc
print(json.dumps({"diff": diff, "classes": len(classes), "uvloop": "uvloop.loop" in sys.modules,
                  "is_ours": [asyncio.Transport.sendfile_zc is fn, asyncio.StreamWriter.sendfile_zc is fn]}))
"""


@pytest.mark.asyncio_only("a fresh interpreter, no loop")
def test_importing_zcsend_adds_exactly_sendfile_zc_to_asyncio():
    """The two attributes the stubs and README declare, and nothing else."""
    proc = subprocess.run([sys.executable, "-c", _SNAPSHOT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["diff"] == [["added", "asyncio.streams.StreamWriter.sendfile_zc"],
                           ["added", "asyncio.transports.Transport.sendfile_zc"]]
    assert out["is_ours"] == [True, True]
    assert out["classes"] > 50  # the snapshot did see asyncio's classes
    assert "sendfile_zc" in zcsend.SupportsSendfileZc.__dict__
