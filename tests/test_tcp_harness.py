"""
Backends for the TCP/UDP router tests (no tests here): a TLS server with its
own CA, a TCP echo server that records what it received, a UDP echo server.
Each runs in a thread on loopback, bounded in connections, and stops with
``close()``.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_tls_files(directory: str, name: str) -> tuple[str, str, str]:
    """A throw-away CA and a leaf for ``name``: (ca.pem, leaf.pem, leaf.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcp test backend CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, f) for f in ("backend-ca.pem", "backend.pem", "backend.key"))
    for path, data in zip(paths, (
        ca.public_bytes(serialization.Encoding.PEM),
        leaf.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class _Server:
    """Accepts at most ``limit`` connections, each handled by ``handle(conn)`` in a thread."""

    def __init__(self, limit: int = 50, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._limit = limit
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        for _ in range(self._limit):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            threading.Thread(target=self._guarded, args=(conn,), daemon=True).start()

    def _guarded(self, conn):
        try:
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


class EchoServer(_Server):
    """Answers every chunk with ``echo:`` + the chunk; keeps all each connection received."""

    def handle(self, conn):
        seen = bytearray()
        self.received.append(seen)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            seen += data
            conn.sendall(b"echo:" + data)


class TLSServer(_Server):
    """A TLS server (its own certificate) answering ``tls-backend:`` + what it read."""

    def __init__(self, cert: str, key: str, **kwargs):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        super().__init__(**kwargs)

    def handle(self, conn):
        with self.context.wrap_socket(conn, server_side=True) as tls:
            data = tls.recv(65536)
            self.received.append(data)
            tls.sendall(b"tls-backend:" + data)


class UDPEcho:
    """Answers each datagram with ``udp:`` + it; at most ``limit`` datagrams."""

    def __init__(self, limit: int = 200):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list = []
        self._limit = limit
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        for _ in range(self._limit):
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            self.peers.append(peer)
            self.sock.sendto(b"udp:" + data, peer)

    def close(self):
        self.sock.close()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` and read one answer (b"" if the connection is closed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(data)
            return sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):  # edge closed it first (even as it connected)
        return b""


def tls_exchange(port: int, server_name: str, cafile: str, data: bytes, timeout: float = 5.0):
    """(answer, peer certificate subject CN) of a TLS exchange that verifies against ``cafile``."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            tls.sendall(data)
            answer = tls.recv(65536)
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            return answer, subject.get("commonName", "")
