"""TLS termination on a listener: certificate files, SNI, reload without dropping anything.

Each fleet brings one certificate (PEM chain and key files, whose names may
cover several hosts). On a listener shared by several fleets, the server
name a client asks for (SNI) picks the fleet's certificate with the same
table that routes its requests by Host; a client that sends no name, or an
unknown one, gets the default fleet's (or the first fleet's) certificate.

Files are watched by their stat (inode, size, mtime): when one changes, a new
``SSLContext`` is loaded and used for handshakes from then on, while open
connections carry on with the one they started with. A certificate that
does not load (a key that does not match the new chain, say, mid-copy) keeps
the old one serving and is tried again at the next look.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import ProviderError
from kiln.local.routes import Routes

log = logging.getLogger("kiln.lb")
ALPN = ["http/1.1"]  # no h2: see docs/local-provider.md


@dataclass(frozen=True)
class CertFiles:
    cert: str
    key: str


def _signature(files: CertFiles) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in (files.cert, files.key):
        st = Path(path).stat()
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def load_context(files: CertFiles) -> ssl.SSLContext:
    """A server context with this certificate; a clear error when it cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ProviderError(
            f"cannot use the TLS certificate {files.cert} with key {files.key}: "
            f"{getattr(exc, 'strerror', None) or exc}",
            hint="[provider.local] tls needs a PEM certificate chain and its unencrypted key",
        ) from exc
    return context


class Certificates:
    """The contexts in use, by files; reloaded when the files change."""

    def __init__(self) -> None:
        self._loaded: dict[CertFiles, tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext]] = {}

    def get(self, files: CertFiles) -> ssl.SSLContext:
        """The current context for these files: the cached one unless they changed."""
        try:
            signature = _signature(files)
        except OSError as exc:
            cached = self._loaded.get(files)
            if cached is not None:
                log.error("TLS files %s: %s; keeping the loaded certificate", files.cert, exc)
                return cached[1]
            raise ProviderError(
                f"cannot read the TLS certificate {files.cert} or key {files.key}: {exc.strerror}",
                hint="check the paths in [provider.local] tls (relative to kiln.toml)",
            ) from exc
        cached = self._loaded.get(files)
        if cached is not None and cached[0] == signature:
            return cached[1]
        try:
            context = load_context(files)
        except ProviderError:
            if cached is None:
                raise
            log.error("TLS files %s changed but do not load; keeping the old ones", files.cert)
            return cached[1]
        if cached is not None:
            log.info("TLS certificate %s reloaded", files.cert)
        self._loaded[files] = (signature, context)
        return context

    def forget_except(self, keep: set[CertFiles]) -> None:
        for files in [f for f in self._loaded if f not in keep]:
            del self._loaded[files]


class Sni:
    """A listener's server context: its callback hands each handshake the right certificate."""

    def __init__(self, default: ssl.SSLContext) -> None:
        self.routes: Routes[ssl.SSLContext] = Routes()
        self.default = default
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(ALPN)
        self.context.sni_callback = self._pick

    def _pick(self, conn: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        conn.context = self.routes.pick(name) or self.default
