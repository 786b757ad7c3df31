"""
One ACME order, start to finish, as a blocking call for a worker thread.

:class:`ACMEClient` holds one resolver's account (created on first use,
kept in ``account.json``) and runs :meth:`ACMEClient.order`: new order,
one challenge per pending authorization published (HTTP-01 and TLS-ALPN-01
on the thread-safe :class:`~edge.acme.challenges.ChallengeBoard`,
DNS-01 through a publisher), answered, polled, finalized, and always
cleaned up.  JOSE, nonces and polling are the ``acme`` package's.  Every
failure becomes an :class:`OrderError` with a one-line reason and the
CA's ``Retry-After`` when it sent one.
"""

from __future__ import annotations

import datetime
import email.utils
import time
from dataclasses import dataclass
from typing import Callable

import josepy
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.logger import Logger

from edge.acme.challenges import tls_alpn_certificate
from edge.acme.dns01 import challenge_fqdn
from edge.acme.files import ResolverFiles
from edge.config import ACME_DIRECTORIES
from edge.tls.store import CertifiedKey, StoreError, parse_bundle

__all__ = ["ACMEClient", "OrderError", "Issued", "new_certificate_key", "directory_url"]

_ACCOUNT_GONE = ("unauthorized", "accountDoesNotExist")


class OrderError(Exception):
    """An order failed; ``str()`` is the reason, ``retry_after`` seconds the CA asked for."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Issued:
    certified: CertifiedKey
    # When the CA's renewal information (ARI) says to renew, if it offers it.
    renew_at: datetime.datetime | None = None


def directory_url(ca: str) -> str:
    return ACME_DIRECTORIES.get(ca, ca)


def new_certificate_key(key_type: str):
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(65537, int(key_type[3:]))


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _problem(error: Exception) -> str:
    if isinstance(error, messages.Error):
        return f"{error.code or error.typ}: {error.detail or ''}".strip()
    if isinstance(error, errors.ValidationError):
        reasons = []
        for authzr in error.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    reasons.append(f"{authzr.body.identifier.value}: {challb.error.detail or challb.error.typ}")
        return "validation failed: " + ("; ".join(reasons) or "no reason given")
    if isinstance(error, errors.TimeoutError):
        return "the CA did not finish the order in time"
    return f"{type(error).__name__}: {error}"


def _offers_ari(directory: messages.Directory) -> bool:
    try:
        directory["renewalInfo"]
    except (KeyError, AttributeError):
        return False
    return True


def _type_of(challb) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return chall.typ


class _KeyAuthorizationResponse(challenges.KeyAuthorizationChallengeResponse):
    """The empty ``{}`` answer RFC 8555 wants, for challenge types acme no longer models."""

    typ = "tls-alpn-01"


class ACMEClient:
    """One resolver's account and orders; every method blocks (worker thread only)."""

    _log = Logger()

    def __init__(
        self,
        resolver,
        files: ResolverFiles,
        board,
        dns_publisher=None,
        on_account: Callable[[dict], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: int = 30,
    ):
        self.resolver = resolver
        self.files = files
        self.board = board
        self.dns = dns_publisher
        # Called (in this worker thread) with a new account's data, to share it.
        self.on_account = on_account
        self.sleep = sleep
        self.timeout = timeout
        self.url = directory_url(resolver.ca)
        self._client: client.ClientV2 | None = None
        self._key: josepy.JWK | None = None
        self._retry_after: float | None = None

    # -- account ----------------------------------------------------------

    def _network(self, key: josepy.JWK, account=None) -> client.ClientNetwork:
        net = client.ClientNetwork(
            key,
            account=account,
            alg=josepy.ES256,
            verify_ssl=self.resolver.ca_bundle or True,
            user_agent="edge-acme",
            timeout=self.timeout,
        )
        net.session.hooks["response"].append(self._note_response)
        return net

    def _note_response(self, response, *args, **kwargs):
        if response.status_code >= 400:
            self._retry_after = _retry_after_seconds(response.headers.get("Retry-After"))

    def _connect(self, fresh: bool = False) -> client.ClientV2:
        if self._client is not None and not fresh:
            return self._client
        saved = None if fresh else self.files.read_account()
        if saved is not None and saved.get("directory") == self.url and saved.get("uri"):
            key = josepy.JWK.json_loads(saved["key"])
            account = messages.RegistrationResource(body=messages.Registration(), uri=saved["uri"])
            net = self._network(key, account)
            acme = client.ClientV2(client.ClientV2.get_directory(self.url, net), net)
        else:
            key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
            net = self._network(key)
            directory = client.ClientV2.get_directory(self.url, net)
            acme = client.ClientV2(directory, net)
            eab = None
            if self.resolver.eab_kid:
                eab = messages.ExternalAccountBinding.from_data(
                    key.public_key(), self.resolver.eab_kid, self.resolver.eab_hmac_key, directory
                )
            registration = messages.NewRegistration.from_data(
                email=self.resolver.email or None,
                terms_of_service_agreed=True,
                external_account_binding=eab,
            )
            regr = acme.new_account(registration)
            data = {"directory": self.url, "key": key.json_dumps(), "uri": regr.uri}
            self.files.write_account(data)
            if self.on_account is not None:
                self.on_account(data)
            self._log.info(
                "Created an ACME account for resolver {resolver} at {url}",
                resolver=self.resolver.name,
                url=self.url,
            )
        self._client, self._key = acme, key
        return acme

    # -- one order --------------------------------------------------------

    def order(self, names: tuple[str, ...]) -> Issued:
        """A certificate for ``names`` from the CA; raises :class:`OrderError`."""
        self._retry_after = None
        try:
            try:
                return self._order(names, self._connect())
            except messages.Error as e:
                if e.code not in _ACCOUNT_GONE or self._client is None:
                    raise
                # A deactivated or revoked account: make a new one, once.
                self._log.warn(
                    "The ACME account of resolver {resolver} is no longer valid ({problem});"
                    " creating a new one",
                    resolver=self.resolver.name,
                    problem=_problem(e),
                )
                return self._order(names, self._connect(fresh=True))
        except OrderError:
            raise
        except Exception as e:  # network, protocol, CA errors: all one line
            if not isinstance(e, (messages.Error, errors.Error)):
                self._client = None  # reconnect (fresh directory and nonces) next time
            raise OrderError(_problem(e), self._retry_after) from e

    def _order(self, names: tuple[str, ...], acme: client.ClientV2) -> Issued:
        key = new_certificate_key(self.resolver.key_type)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        orderr = acme.new_order(crypto_util.make_csr(key_pem, list(names)))
        cleanups: list[Callable[[], None]] = []
        try:
            answers = []
            for authzr in orderr.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # validated recently (authorization reuse)
                answers.append(self._publish(authzr, cleanups))
            if answers and self.resolver.challenge == "dns-01" and self.resolver.dns_propagation_delay:
                self.sleep(self.resolver.dns_propagation_delay)
            for challb, response in answers:
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.resolver.order_timeout)
            orderr = acme.poll_and_finalize(orderr, deadline)
        finally:
            for cleanup in reversed(cleanups):
                try:
                    cleanup()
                except Exception as e:
                    self._log.warn("Cleaning up an ACME challenge failed: {error}", error=e)
        try:
            certified = parse_bundle(orderr.fullchain_pem.encode("ascii"), key_pem, source="acme")
        except StoreError as e:
            raise OrderError(f"the CA's certificate cannot be served: {e}") from None
        renew_at = None
        if _offers_ari(acme.directory):
            try:
                suggested, _ = acme.renewal_time(orderr.fullchain_pem.encode("ascii"))
                if suggested is not None:
                    renew_at = suggested if suggested.tzinfo else suggested.replace(tzinfo=datetime.timezone.utc)
            except errors.ARIError as e:
                self._log.info("No ACME renewal information (ARI): {error}", error=e)
        return Issued(certified, renew_at)

    def _publish(self, authzr, cleanups: list) -> tuple:
        wanted = self.resolver.challenge
        identifier = authzr.body.identifier.value
        name = f"*.{identifier}" if authzr.body.wildcard else identifier
        challb = next((c for c in authzr.body.challenges if _type_of(c) == wanted), None)
        if challb is None:
            offered = ", ".join(sorted({_type_of(c) for c in authzr.body.challenges}))
            raise OrderError(f"the CA offers no {wanted} challenge for {name} (only {offered})")
        assert self._key is not None
        thumbprint = josepy.b64encode(self._key.thumbprint(hash_function=hashes.SHA256)).decode()
        if wanted == "http-01":
            response, key_authorization = challb.chall.response_and_validation(self._key)
            token = challb.chall.encode("token")
            self.board.add_http(identifier, token, key_authorization)
            cleanups.append(lambda: self.board.remove_http(token))
        elif wanted == "tls-alpn-01":
            token = challb.chall.jobj["token"]
            key_authorization = f"{token}.{thumbprint}"
            response = _KeyAuthorizationResponse(key_authorization=key_authorization)
            self.board.add_alpn(identifier, tls_alpn_certificate(identifier, key_authorization))
            cleanups.append(lambda: self.board.remove_alpn(identifier))
        else:
            if self.dns is None:
                raise OrderError("dns-01 needs dns_server or dns_hook")
            response, value = challb.chall.response_and_validation(self._key)
            fqdn = challenge_fqdn(name)
            self.dns.present(fqdn, value)
            cleanups.append(lambda: self.dns.cleanup(fqdn, value))
        return challb, response
