"""The client side every benchmark shares: ask for the file, read to EOF."""
import socket
import time


def fetch(port, wrap=None, slow=False):
    """Connects to 127.0.0.1:port (through wrap(sock) for TLS), sends one byte,
    reads to EOF; slow caps the pace at 256 KiB per ms. Returns the byte count."""
    s = socket.create_connection(("127.0.0.1", port))
    if wrap is not None:
        s = wrap(s)
    s.sendall(b"g")
    got = 0
    buf = bytearray(256 << 10)
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        if slow and (got + n) // (256 << 10) != got // (256 << 10):
            time.sleep(0.001)
        got += n
    s.close()
    return got
