"""
DNS-01: publish ``_acme-challenge.<name> TXT <value>`` and take it away.

Two publishers with one shape (``present(fqdn, value)``, ``cleanup(fqdn,
value)``), both blocking, both run in the ACME worker thread:
:class:`RFC2136Publisher` sends TSIG-signed dynamic updates (RFC 2136,
RFC 8945) to the zone's primary with dnspython; :class:`HookPublisher`
runs a program (``hook present|cleanup FQDN VALUE``) for any other DNS
provider, the way lego's ``exec`` provider does.
"""

from __future__ import annotations

import subprocess

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update

__all__ = ["DNSPublishError", "RFC2136Publisher", "HookPublisher", "publisher_for", "challenge_fqdn"]

_TTL = 60


class DNSPublishError(Exception):
    """The record could not be published; ``str()`` says why."""


def challenge_fqdn(name: str) -> str:
    """``_acme-challenge.<name>.`` (a wildcard's record is its base name's)."""
    if name.startswith("*."):
        name = name[2:]
    return f"_acme-challenge.{name}."


def _split_server(server: str) -> tuple[str, int]:
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port)
    return server, 53


class RFC2136Publisher:
    """TXT records by TSIG-signed dynamic update to ``server``."""

    def __init__(self, server: str, key_name: str, secret: str, algorithm: str = "hmac-sha256", timeout: float = 10.0):
        self.host, self.port = _split_server(server)
        self.keyring = dns.tsigkeyring.from_text({key_name: secret})
        self.key_name = dns.name.from_text(key_name)
        self.algorithm = dns.name.from_text(algorithm)
        self.timeout = timeout

    def zone_of(self, fqdn: str) -> dns.name.Name:
        """The zone holding ``fqdn``: the closest enclosing name with an SOA."""
        name = dns.name.from_text(fqdn)
        while len(name) > 1:
            query = dns.message.make_query(name, dns.rdatatype.SOA)
            try:
                answer = dns.query.udp(query, self.host, port=self.port, timeout=self.timeout)
            except Exception as e:
                raise DNSPublishError(f"asking {self.host}:{self.port} for the SOA of {name}: {e}") from None
            if answer.rcode() == dns.rcode.NOERROR and any(
                rrset.rdtype == dns.rdatatype.SOA and rrset.name == name for rrset in answer.answer
            ):
                return name
            name = name.parent()
        raise DNSPublishError(f"{self.host}:{self.port} is authoritative for no zone above {fqdn}")

    def _send(self, fqdn: str, value: str, add: bool) -> None:
        zone = self.zone_of(fqdn)
        update = dns.update.UpdateMessage(
            zone, keyring=self.keyring, keyname=self.key_name, keyalgorithm=self.algorithm
        )
        relative = dns.name.from_text(fqdn).relativize(zone)
        if add:
            update.add(relative, _TTL, "TXT", f'"{value}"')
        else:
            update.delete(relative, "TXT", f'"{value}"')
        try:
            response = dns.query.tcp(update, self.host, port=self.port, timeout=self.timeout)
        except Exception as e:
            raise DNSPublishError(f"update for {fqdn} to {self.host}:{self.port}: {e}") from None
        if response.rcode() != dns.rcode.NOERROR:
            raise DNSPublishError(
                f"{self.host}:{self.port} refused the update for {fqdn}: {dns.rcode.to_text(response.rcode())}"
            )

    def present(self, fqdn: str, value: str) -> None:
        self._send(fqdn, value, add=True)

    def cleanup(self, fqdn: str, value: str) -> None:
        self._send(fqdn, value, add=False)


class HookPublisher:
    """``program present|cleanup FQDN VALUE``; a non-zero exit is an error."""

    def __init__(self, program: str, timeout: float = 120.0):
        self.program = program
        self.timeout = timeout

    def _run(self, action: str, fqdn: str, value: str) -> None:
        try:
            done = subprocess.run(
                [self.program, action, fqdn, value],
                capture_output=True,
                timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DNSPublishError(f"dns_hook {self.program} {action}: {e}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout)[-300:].decode("utf-8", "replace").strip()
            raise DNSPublishError(f"dns_hook {self.program} {action} exited {done.returncode}: {tail}")

    def present(self, fqdn: str, value: str) -> None:
        self._run("present", fqdn, value)

    def cleanup(self, fqdn: str, value: str) -> None:
        self._run("cleanup", fqdn, value)


def publisher_for(resolver):
    """The DNS-01 publisher an ``[acme.<name>]`` section describes, or ``None``."""
    if resolver.dns_server:
        return RFC2136Publisher(
            resolver.dns_server, resolver.tsig_key_name, resolver.tsig_secret, resolver.tsig_algorithm
        )
    if resolver.dns_hook:
        return HookPublisher(resolver.dns_hook)
    return None
