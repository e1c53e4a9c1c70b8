"""python -m zcsend serve DIR [--host 127.0.0.1] [--port 8000] [--loop uvloop]
                           [--tls-cert FILE --tls-key FILE] [limits: see --help]"""
import argparse
import asyncio
import ssl
import textwrap

from .server import _SENDFILE_TIMEOUT, LINGER, MAX_HEAD, MAX_HEADERS, serve

LIMITS = textwrap.fill(f"""\
Fixed limits: a request head (request line and headers) of at most
{MAX_HEAD >> 10} KiB and {MAX_HEADERS} header lines, else 400; a request with
Transfer-Encoding gets 400. After a 400 or 413 the server shuts its side and
discards what the client still sends for up to {LINGER:g} s before closing (not
over TLS). At --max-connections, the connection that has waited longest for a
request (idle, or a slow head) is closed to make room; the cap is lowered to
what the open file limit (RLIMIT_NOFILE, raised toward its hard limit) allows.""", 79)
SEND_TIMEOUT = ("a response that makes no progress for this long is aborted" if _SENDFILE_TIMEOUT else
                "a response not sent within this long is aborted (this zcsend.sendfile has no "
                "timeout of its own: a file body must go out whole in this long)")


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"not a positive finite number: {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zcsend", description="zcsend command line")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a directory over HTTP/1.1 with zero-copy sendfile",
                       description="Serve a directory over HTTP/1.1 (GET, HEAD) with zero-copy sendfile.",
                       epilog=LIMITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("directory")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                   help="event loop (uvloop must be installed)")
    s.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate chain")
    s.add_argument("--tls-key", metavar="FILE", help="its private key (default: in --tls-cert)")
    lim = s.add_argument_group("limits")
    lim.add_argument("--header-timeout", type=_positive(float), default=60.0, metavar="SECONDS",
                     help="time a client has to send a request's head and body, from the accept "
                          "(on a kept-alive connection, from the request's first byte); also "
                          "bounds the TLS handshake (nginx client_header_timeout; default %(default)g)")
    lim.add_argument("--keepalive-timeout", type=_positive(float), default=75.0, metavar="SECONDS",
                     help="time an idle kept-alive connection waits for the next request "
                          "(nginx keepalive_timeout; default %(default)g)")
    lim.add_argument("--send-timeout", type=_positive(float), default=60.0, metavar="SECONDS",
                     help=SEND_TIMEOUT + ", as is a closing connection whose last response is "
                          "not out by then (nginx send_timeout; default %(default)g)")
    lim.add_argument("--max-body", type=_positive(int), default=1 << 20, metavar="BYTES",
                     help="longest request body, read and discarded; a longer one gets 413 "
                          "(nginx client_max_body_size; default %(default)d)")
    lim.add_argument("--max-connections", type=_positive(int), default=1024, metavar="N",
                     help="connections open at once; past it the one waiting longest for a "
                          "request is closed, or accepting pauses (default %(default)d)")
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
    limits = {k: getattr(args, k) for k in ("header_timeout", "keepalive_timeout", "send_timeout",
                                            "max_body", "max_connections")}
    try:
        runner(serve(args.directory, args.host, args.port, ssl_context=ctx, **limits))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
