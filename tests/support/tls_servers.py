"""Real TLS servers on loopback for the prober's tests: an "edge" serving a chain from the test
PKI (swappable while running: a rotation), and the broken kinds a prober meets (a socket that
accepts and never speaks, a plain-text port).

Each listens on its own loopback address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is loopback on
Linux), so two edges of one host share a port as real CDN edges do.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives import serialization

from devstack.certs import CertificateAuthority, Chain


def free_port_on(*addresses: str) -> int:
    """A port free on every one of `addresses`."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        held = []
        try:
            for address in addresses:
                sock = socket.socket()
                held.append(sock)
                sock.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no common free port on {addresses}")


class LoopbackServer:
    """Accepts on `address:port` in a thread; `handle(conn)` decides what a connection gets."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((address, port))
        self.port = self._sock.getsockname()[1]  # port 0: the one the kernel chose
        self._sock.listen(64)
        self._stopping = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass  # a client that hangs up early is normal here
        finally:
            if not self.keep_open:
                conn.close()

    keep_open = False

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                conn.close()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)


class TlsEdge(LoopbackServer):
    """Serves `chain` (leaf first) with the leaf's private key from `ca`; `serve()` switches
    the chain for every later handshake, as a deployment does. Records the SNI names seen."""

    def __init__(self, address: str, port: int, ca: CertificateAuthority, work_dir: Path) -> None:
        super().__init__(address, port)
        self.ca = ca
        self.work_dir = work_dir
        self.server_names: list[str | None] = []
        self.handshakes = 0
        self._context: ssl.SSLContext | None = None
        self._serial = 0

    def serve(self, leaf_key: str = "primary", chain: Chain | None = None) -> Chain:
        chain = chain or self.ca.chain(leaf_key)
        self._serial += 1
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stem = self.work_dir / f"{self.address}-{self.port}-{self._serial}"
        cert_file, key_file = stem.with_suffix(".chain.pem"), stem.with_suffix(".key.pem")
        # Servers send the leaf and intermediates, not the root.
        cert_file.write_text("".join(chain.pem[:-1]))
        key_file.write_bytes(
            self.ca.keys[leaf_key].private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.sni_callback = self._sni
        self._context = context
        return chain

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def handle(self, conn: socket.socket) -> None:
        assert self._context is not None, "call serve() first"
        conn.settimeout(5)
        with self._context.wrap_socket(conn, server_side=True) as tls:
            self.handshakes += 1
            tls.recv(1)  # until the client closes


class SilentEdge(LoopbackServer):
    """Accepts and never says a word: a hung edge, which must time out, not hang a probe."""

    keep_open = True

    def handle(self, conn: socket.socket) -> None:
        self._stopping.wait()


class PlainTextPort(LoopbackServer):
    """A plain HTTP server where TLS was expected."""

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
