"""uvicorn.run() with zcsend's protocol class, for uvicorns whose command line
takes no `--http module:Class` (before 0.36): the same options as the CLI the
tests use (--fd or --host and --port, --http, --loop, --ssl-certfile, --ssl-keyfile,
--workers, --timeout-keep-alive)."""
import argparse
import sys

import uvicorn
from uvicorn.importer import import_from_string


def main():
    p = argparse.ArgumentParser()
    p.add_argument("app")
    p.add_argument("--app-dir", default=".")
    p.add_argument("--fd", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--http")
    p.add_argument("--loop", default="auto")
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--workers", type=int)
    p.add_argument("--timeout-keep-alive", type=int, default=5)
    a = p.parse_args()
    sys.path.insert(0, a.app_dir)
    uvicorn.run(a.app, fd=a.fd, host=a.host, port=a.port, http=import_from_string(a.http), loop=a.loop,
                ssl_certfile=a.ssl_certfile, ssl_keyfile=a.ssl_keyfile, workers=a.workers,
                timeout_keep_alive=a.timeout_keep_alive)


if __name__ == "__main__":  # --workers spawns processes that import this file
    main()
