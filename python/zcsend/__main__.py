"""python -m zcsend serve DIR [--host 127.0.0.1] [--port 8000]"""
import argparse
import asyncio

from .server import serve


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zcsend", description="zcsend command line")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a directory over HTTP/1.1 with zero-copy sendfile")
    s.add_argument("directory")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.directory, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
