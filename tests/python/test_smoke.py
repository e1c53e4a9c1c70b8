import asyncio
import zcsend
from conftest import Pair, run, file_sha1


def test_whole_file(kind, datafile):
    path, size, digest = datafile

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(size))
                before = zcsend.stats()
                sent = await zcsend.sendfile(p.server, f)
                assert sent == size
                assert f.tell() == size
                assert await reading == (digest, size)
                after = zcsend.stats()
                if zcsend.backend() != "emulated":
                    assert after["bytes_zero_copy"] - before["bytes_zero_copy"] == size
    run(main())
