"""Real pebble, a tiny backend and real ``twistd -n edge`` processes on loopback, for the ACME tests."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_port
from tests.processes import terminate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
PEBBLE = shutil.which("pebble")


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_pebble_tls(directory: str) -> str:
    """A throw-away CA and a 127.0.0.1 leaf for pebble's own HTTPS; returns the CA file."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test listener CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    with open(os.path.join(directory, "listener-ca.pem"), "wb") as f:
        f.write(_pem(ca))
    with open(os.path.join(directory, "listener.pem"), "wb") as f:
        f.write(_pem(leaf))
    with open(os.path.join(directory, "listener.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return os.path.join(directory, "listener-ca.pem")


def wait_port(port: int, deadline: float = 20.0, proc=None) -> None:
    import socket

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class _Logged:
    """A child process whose output goes to ``log_path``; ``stop()`` ends it (bounded)."""

    proc: subprocess.Popen
    log_path: str

    def _start(self, log_path: str, argv: list[str], **kwargs) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, **kwargs)

    def _wait(self, port: int, deadline: float = 20.0) -> None:
        """Wait for ``port``; a process that never listens is stopped, not leaked."""
        try:
            wait_port(port, deadline=deadline, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


class Pebble(_Logged):
    """pebble on loopback; validates against ``http_port``/``tls_port`` and resolves through ``dns``."""

    def __init__(self, directory: str, http_port: int, tls_port: int, dns: str, validity: int = 0, env=None,
                 ports: tuple[int, int] | None = None, extra: dict | None = None):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.listener_ca = write_pebble_tls(directory)
        self.port, self.management = ports or (free_port(), free_port())
        settings = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": os.path.join(directory, "listener.pem"),
            "privateKey": os.path.join(directory, "listener.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity:
            settings["certificateValidityPeriod"] = validity
        settings.update(extra or {})
        with open(os.path.join(directory, "pebble.json"), "w") as f:
            json.dump({"pebble": settings}, f)
        environment = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        environment.update(env or {})
        self._start(
            os.path.join(directory, "pebble.log"),
            [PEBBLE, "-config", os.path.join(directory, "pebble.json"), "-dnsserver", dns],
            env=environment, cwd=directory,
        )
        self._wait(self.port)
        self._wait(self.management)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _management(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=self.listener_ca)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}{path}", context=context, timeout=10) as r:
            return r.read()

    def trust_file(self) -> str:
        """pebble's issuing root and intermediate (PEM), for curl --cacert."""
        path = os.path.join(self.directory, "issuer-roots.pem")
        with open(path, "wb") as f:
            f.write(self._management("/roots/0") + b"\n" + self._management("/intermediates/0"))
        return path

    def orders(self) -> int:
        """New orders pebble accepted, counted from its log."""
        return self.log().count("Added order")



class Backend:
    """A loopback HTTP server answering every GET with ``body``."""

    def __init__(self, body: bytes = b"hello from the backend\n"):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class EdgePorts:
    http: int = field(default_factory=free_port)
    https: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    dns: int = field(default_factory=free_port)


class EdgeProcess(_Logged):
    """``twistd -n edge`` with a config written from ``text``; Docker unreachable."""

    def __init__(self, directory: str, ports: EdgePorts, text: str, upstream: str = "127.0.0.1:9", wait: bool = True,
                 docker: str = 'url = "unix:///nonexistent/edge-test.sock"'):
        os.makedirs(directory, exist_ok=True)
        self.ports = ports
        self.directory = directory
        config = (
            f'[docker]\n{docker}\n'
            f'[entrypoints.http]\naddress = "tcp:{ports.http}:interface=127.0.0.1"\n'
            f'[entrypoints.https]\naddress = "tcp:{ports.https}:interface=127.0.0.1"\ntls = true\n'
            f'[admin]\naddress = "tcp:{ports.admin}:interface=127.0.0.1"\n'
            f'[dns]\nport = {ports.dns}\ninterfaces = ["127.0.0.1"]\nupstream = ["{upstream}"]\n'
            'advertise = ["127.0.0.1"]\n' + text
        )
        self.config_path = os.path.join(directory, "edge.toml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self._start(os.path.join(directory, "edge.log"), [TWISTD, "-n", "--pidfile=", "edge", "--config", self.config_path], cwd=ROOT)
        if wait:
            self.wait()

    def wait(self) -> None:
        self._wait(self.ports.admin, deadline=30)

    def api(self, path: str):
        for attempt in range(5):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.admin}{path}", timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                if attempt == 4 or self.proc.poll() is not None:
                    raise
                time.sleep(0.3)



def curl(url: str, host: str, port: int, cacert: str, timeout: float = 5) -> subprocess.CompletedProcess:
    """curl verifying edge's certificate for ``host`` against ``cacert`` only."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), "--cacert", cacert, "--resolve", f"{host}:{port}:127.0.0.1", url],
        capture_output=True, text=True, timeout=timeout + 5,
    )


def wait_until(check, deadline: float, step: float = 0.5):
    """Poll ``check()`` until it returns a true value or ``deadline`` seconds pass (bounded)."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(step)
    return last


class Named(_Logged):
    """BIND 9 on loopback, primary for ``zone``, accepting TSIG-signed TXT updates."""

    KEY_NAME = "edge-acme"

    def __init__(self, directory: str, zone: str):
        import base64

        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.zone = zone
        self.port = free_port()
        self.secret = base64.b64encode(os.urandom(32)).decode()
        with open(os.path.join(directory, "zone.db"), "w") as f:
            f.write(
                f"$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n"
                f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            )
        with open(os.path.join(directory, "named.conf"), "w") as f:
            f.write(
                f'options {{ directory "{directory}"; listen-on port {self.port} {{ 127.0.0.1; }};'
                f' listen-on-v6 {{ none; }}; pid-file "{directory}/named.pid"; recursion no;'
                f' dnssec-validation no; allow-query {{ 127.0.0.1; }}; querylog yes; }};\n'
                f'controls {{ }};\n'
                f'key "{self.KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};\n'
                f'zone "{zone}" {{ type primary; file "{directory}/zone.db";'
                f' update-policy {{ grant {self.KEY_NAME} zonesub TXT; }}; }};\n'
            )
        self._start(
            os.path.join(directory, "named.log"),
            [shutil.which("named") or "/usr/sbin/named", "-g", "-u", "root", "-c", os.path.join(directory, "named.conf")],
        )
        self._wait(self.port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"



class ChallTestServer(_Logged):
    """pebble-challtestsrv: a DNS server whose TXT records are set over HTTP (for DNS-01 hooks)."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.dns_port, self.management = free_port(), free_port()
        self._start(
            os.path.join(directory, "challtestsrv.log"),
            [shutil.which("pebble-challtestsrv"), "-dns01", f"127.0.0.1:{self.dns_port}",
             "-management", f"127.0.0.1:{self.management}", "-http01", "", "-https01", "", "-tlsalpn01", ""],
        )
        self._wait(self.management)

    @property
    def dns(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

