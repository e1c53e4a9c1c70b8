"""python -m zcsend serve DIR [--host 127.0.0.1] [--port 8000] [--loop uvloop]
                           [--tls-cert FILE --tls-key FILE]"""
import argparse
import asyncio
import ssl

from .server import serve


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zcsend", description="zcsend command line")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a directory over HTTP/1.1 with zero-copy sendfile")
    s.add_argument("directory")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                   help="event loop (uvloop must be installed)")
    s.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate chain")
    s.add_argument("--tls-key", metavar="FILE", help="its private key (default: in --tls-cert)")
    args = p.parse_args(argv)
    ctx = None
    if args.tls_key and not args.tls_cert:
        p.error("--tls-key needs --tls-cert")
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            p.error("--loop uvloop: uvloop is not installed (pip install uvloop)")
        runner = uvloop.run
    else:
        runner = asyncio.run
    try:
        runner(serve(args.directory, args.host, args.port, ssl_context=ctx))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
