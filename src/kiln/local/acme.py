"""Certificates from an ACME CA (RFC 8555, Let's Encrypt): the account, the order, the files.

Everything here blocks (HTTPS to the CA, key generation, file writes), so the
agent runs it on threads; the balancer never does (its event loop only ever
answers challenge tokens it was given). The protocol itself, JWS signing,
nonces and polling, is certbot's ``acme`` library; kiln adds where things
are kept and what a user is told when the CA cannot be reached.

Under ``KILN_HOME/acme`` (0700), every file 0600:

    accounts/<digest of the directory URL>/key.pem   the account key (RSA 2048)
    certs/<fleet>/privkey.pem, fullchain.pem         the certificate and its key
    certs/<fleet>/state.json                          the last failure, and when to try again
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.errors import CertificateError
from kiln.home import Home

if TYPE_CHECKING:  # the ACME libraries load when a certificate is ordered, not with the agent
    from acme import challenges, messages

RENEW_FRACTION = 2 / 3  # renewed once this much of its lifetime has passed, as certbot does
ORDER_SECONDS = 120.0  # longest the CA may take to validate and issue


@dataclass(frozen=True)
class AcmeSpec:
    """[provider.local] acme, as the agent holds it."""

    directory: str
    email: str | None
    http: tuple[str, int]
    ca_bundle: str | None

    @classmethod
    def from_settings(cls, data: dict[str, Any]) -> AcmeSpec:
        host, port = data["http"]
        return cls(data["directory"], data.get("email"), (str(host), int(port)), data["ca_bundle"])


@dataclass(frozen=True)
class CertInfo:
    """What a stored certificate covers, and for how long."""

    names: tuple[str, ...]
    not_before: float
    not_after: float
    issuer: str

    @property
    def renew_at(self) -> float:
        return self.not_before + RENEW_FRACTION * (self.not_after - self.not_before)

    def covers(self, hosts: tuple[str, ...]) -> bool:
        return set(hosts) <= set(self.names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "renew_at": self.renew_at,
            "issuer": self.issuer,
        }


def read_info(path: Path) -> CertInfo | None:
    """The first certificate of a PEM chain, or None when there is none (yet)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(
        names,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        cert.issuer.rfc4514_string(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a 0600 temporary file and a rename."""
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class CertDir:
    """One fleet's certificate, its key and the state of its renewal, on disk."""

    def __init__(self, home: Home, fleet: str) -> None:
        self.dir = home.root / "acme" / "certs" / fleet
        self.key = self.dir / "privkey.pem"
        self.chain = self.dir / "fullchain.pem"
        self.state_file = self.dir / "state.json"

    def info(self) -> CertInfo | None:
        return read_info(self.chain)

    def save(self, key_pem: bytes, chain_pem: bytes) -> None:
        """Key first, then the chain: the balancer loads the pair once they match."""
        _write_private(self.key, key_pem)
        _write_private(self.chain, chain_pem)
        self.note(None, 0.0)

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def note(self, error: str | None, retry_at: float) -> None:
        """Record the last attempt's failure (None: it worked) for `kiln status`."""
        state = {"error": error, "retry_at": retry_at} if error else {}
        _write_private(self.state_file, json.dumps(state).encode())

    def status(self) -> dict[str, Any] | None:
        """The certificate and the last failure, as `kiln status --json` shows them."""
        info = self.info()
        state = self.state()
        if info is None and not state:
            return None
        return {**(info.as_dict() if info else {}), "error": state.get("error")}


def new_key() -> bytes:
    """A certificate key (ECDSA P-256), PEM (PKCS#8)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Challenge:
    """An HTTP-01 challenge: the CA fetches ``/.well-known/acme-challenge/<token>`` from
    ``host`` and expects ``key_authorization``."""

    host: str
    token: str
    key_authorization: str
    body: messages.ChallengeBody
    response: challenges.ChallengeResponse


@contextlib.contextmanager
def talking(spec: AcmeSpec, hosts: tuple[str, ...]) -> Iterator[None]:
    """Turn what can go wrong with the CA into one line that says what to do."""
    import josepy
    import requests
    from acme import errors, messages

    what = f"cannot get a certificate for {', '.join(hosts)} from {spec.directory}"
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise CertificateError(
            f"{what}: its HTTPS certificate is not trusted ({_reason(exc)})",
            hint="set [provider.local] acme.ca_bundle to the CA that signs it",
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise CertificateError(
            f"{what}: the CA is unreachable ({_reason(exc)})",
            hint="check acme.directory and that this host can reach it; the certificate "
            "is tried again later",
        ) from exc
    except errors.ValidationError as exc:
        failed = [
            f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
            for a in exc.failed_authzrs
            for c in a.body.challenges
            if c.error is not None
        ]
        raise CertificateError(
            f"{what}: the CA could not validate {'; '.join(failed) or 'the names'}",
            hint="the CA must reach http://<host>/.well-known/acme-challenge/ on port 80: "
            "check each host's DNS record and firewall, and acme.http",
        ) from exc
    except messages.Error as exc:
        raise CertificateError(f"{what}: the CA refused: {exc.detail or exc.typ}") from exc
    except errors.Error as exc:
        raise CertificateError(f"{what}: {exc}") from exc
    except (josepy.errors.Error, ValueError) as exc:  # a directory that is not ACME
        raise CertificateError(f"{what}: not an ACME answer ({exc})") from exc


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, which says what really happened."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return str(exc).split(": ", 1)[-1][:200] or type(exc).__name__


class Session:
    """A conversation with one CA under this host's account there (made on first use)."""

    def __init__(self, home: Home, spec: AcmeSpec) -> None:
        from acme import client, errors, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from josepy.jwk import JWKRSA

        self.spec = spec
        digest = hashlib.sha256(spec.directory.encode()).hexdigest()[:16]
        key_file = home.root / "acme" / "accounts" / digest / "key.pem"
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        except FileNotFoundError:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(key_file, pem)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = JWKRSA(key=key)
        net = client.ClientNetwork(self.key, user_agent=f"kiln/{__version__}", timeout=30)
        if spec.ca_bundle:
            net.verify_ssl = spec.ca_bundle  # type: ignore[assignment]  # requests takes a path
        self.client = client.ClientV2(client.ClientV2.get_directory(spec.directory, net), net)
        registration = messages.NewRegistration.from_data(
            email=spec.email, terms_of_service_agreed=True
        )
        try:
            self.client.new_account(registration)
        except errors.ConflictError as exc:  # the account exists: use it
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )

    def order(self, hosts: tuple[str, ...], key_pem: bytes) -> tuple[Any, list[Challenge]]:
        """Ask for a certificate; the HTTP-01 challenges the balancer must answer first."""
        from acme import challenges, crypto_util, messages

        order = self.client.new_order(crypto_util.make_csr(key_pem, list(hosts)))
        found: list[Challenge] = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated recently: nothing to answer
            host = authz.body.identifier.value
            for body in authz.body.challenges:
                if isinstance(body.chall, challenges.HTTP01):
                    response, validation = body.response_and_validation(self.key)
                    token = body.chall.encode("token")
                    found.append(Challenge(host, token, validation, body, response))
                    break
            else:
                raise CertificateError(
                    f"cannot get a certificate for {host} from {self.spec.directory}: "
                    "the CA offers no HTTP-01 challenge for it"
                )
        return order, found

    def finish(self, order: Any, answers: list[Challenge]) -> bytes:
        """Tell the CA the challenges are ready; wait for validation and the certificate."""
        for answer in answers:
            self.client.answer_challenge(answer.body, answer.response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_SECONDS)
        done = self.client.poll_and_finalize(order, deadline)
        return str(done.fullchain_pem).encode()
