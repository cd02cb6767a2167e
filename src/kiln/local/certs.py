"""The agent's ACME duties: a certificate for each fleet that asks, renewed in time.

A fleet with ``[provider.local] acme`` gets its first certificate before its
TLS listener opens (a launch waits for it, and fails with the CA's answer
when there is none); from then on the agent renews it once two thirds of
its lifetime have passed, and keeps trying (the old certificate serving)
when the CA cannot be reached. The new files are renamed into place and the
balancer, which watches them, uses them for new handshakes: no connection
is dropped.

For each order the balancer is told, with its usual configuration push,
which tokens to answer on the fleet's plain ``acme.http`` listener
(``kiln.local.challenges``); the CA is told to validate only once the push
was applied. The ACME conversation and the file writes run on threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kiln.errors import CertificateError, KilnError
from kiln.home import Home
from kiln.local.acme import AcmeSpec, CertDir, CertInfo, Session, new_key, talking
from kiln.local.lblink import BalancerLink
from kiln.local.model import FleetSettings

log = logging.getLogger("kiln.agent")
RETRY_MAX = 3600.0  # a failed renewal is tried again after at most this long


def tls_files(home: Home, name: str, settings: FleetSettings) -> dict[str, str] | None:
    """The certificate files a fleet's listener uses: its own, or the ACME ones."""
    if settings.acme:
        certdir = CertDir(home, name)
        return {"cert": str(certdir.chain), "key": str(certdir.key)}
    if settings.tls_cert and settings.tls_key:
        return {"cert": settings.tls_cert, "key": settings.tls_key}
    return None


def _origin(host: str, settings: FleetSettings) -> str:
    """Where a plain request for ``host`` is redirected: its https address."""
    port = "" if settings.listen_port == 443 else f":{settings.listen_port}"
    return f"https://{host}{port}"


class Certifier:
    """Orders, renewals, and the challenge tokens the balancer must answer meanwhile."""

    def __init__(
        self, home: Home, lb: BalancerLink, fleets: Callable[[], Mapping[str, FleetSettings]]
    ) -> None:
        self.home = home
        self.lb = lb
        self.fleets = fleets  # the fleets that serve now, with their settings
        self.pending: dict[str, FleetSettings] = {}  # fleets waiting for their first one
        self.tokens: dict[str, dict[str, str]] = {}  # host -> token -> key authorization
        self.busy: set[str] = set()  # fleets with an order under way
        self.retry_at: dict[str, float] = {}  # fleet -> next attempt after a failure
        self.infos: dict[str, CertInfo | None] = {}  # fleet -> its certificate, as last read
        self.locks: dict[str, asyncio.Lock] = {}
        lb.challenges = self.listeners

    def listeners(self) -> list[dict[str, Any]]:
        """The plain listeners for the balancer: tokens and redirects of every ACME fleet."""
        by_address: dict[tuple[str, int], dict[str, Any]] = {}
        for settings in [*self.fleets().values(), *self.pending.values()]:
            if not settings.acme:
                continue
            host, port = settings.acme["http"]
            entry = by_address.setdefault(
                (host, port), {"listen": [host, port], "tokens": {}, "redirects": {}}
            )
            for name in settings.hosts:
                entry["redirects"][name] = _origin(name, settings)
                entry["tokens"][name] = dict(self.tokens.get(name, {}))
        return list(by_address.values())

    async def ensure(self, name: str, settings: FleetSettings) -> None:
        """Before a fleet listens: a certificate for its hosts, got now if there is none."""
        if not settings.acme:
            return
        async with self._lock(name):  # after a renewal under way, if any
            info = await asyncio.to_thread(CertDir(self.home, name).info)
            self.infos[name] = info
            if info is not None and info.covers(settings.hosts) and time.time() < info.not_after:
                return  # possibly due for renewal: that happens in the background
            self.pending[name] = settings
            try:
                await self.obtain(name, settings)
            finally:
                del self.pending[name]
                self.lb.changed()

    def _lock(self, name: str) -> asyncio.Lock:
        """One order per fleet at a time."""
        return self.locks.setdefault(name, asyncio.Lock())

    async def due(self, now: float) -> list[tuple[str, FleetSettings]]:
        """Fleets whose certificate should be renewed (or got) now; marked busy."""
        out = []
        for name, settings in self.fleets().items():
            if not settings.acme or name in self.busy or now < self.retry_at.get(name, 0.0):
                continue
            if name not in self.infos:  # e.g. a restarted agent: read, never order blindly
                self.infos[name] = await asyncio.to_thread(CertDir(self.home, name).info)
            info = self.infos[name]
            if info is None or not info.covers(settings.hosts) or now >= info.renew_at:
                self.busy.add(name)
                out.append((name, settings))
        return out

    async def renew(self, name: str, settings: FleetSettings) -> None:
        """Renew in the background; a failure is logged, shown in status and retried."""
        try:
            async with self._lock(name):
                info = self.infos.get(name)
                if info and info.covers(settings.hosts) and time.time() < info.renew_at:
                    return  # got meanwhile (a launch that could not wait for us)
                await self.obtain(name, settings)
        except KilnError as exc:
            log.error("certificate renewal for fleet %s failed: %s", name, exc.message)
        finally:
            self.busy.discard(name)

    async def obtain(self, name: str, settings: FleetSettings) -> None:
        """One order: challenges published, validated, the certificate stored."""
        assert settings.acme is not None
        spec = AcmeSpec.from_settings(settings.acme)
        hosts = settings.hosts
        certdir = CertDir(self.home, name)
        self.busy.add(name)
        try:
            await self._listening(spec)
            with talking(spec, hosts):
                session = await asyncio.to_thread(Session, self.home, spec)
                key = await asyncio.to_thread(new_key)
                order, answers = await asyncio.to_thread(session.order, hosts, key)
                for answer in answers:
                    self.tokens.setdefault(answer.host, {})[answer.token] = answer.key_authorization
                await self.lb.flush()  # answered by the balancer before the CA is told
                chain = await asyncio.to_thread(session.finish, order, answers)
            await asyncio.to_thread(certdir.save, key, chain)
        except CertificateError as exc:
            info = self.infos.get(name)
            lifetime = (info.not_after - info.not_before) if info else RETRY_MAX * 20
            retry = time.time() + min(RETRY_MAX, max(5.0, lifetime / 20))
            self.retry_at[name] = retry
            await asyncio.to_thread(certdir.note, exc.message, retry)
            raise
        finally:
            for host in hosts:
                self.tokens.pop(host, None)
            self.busy.discard(name)
            self.lb.changed()
        self.retry_at.pop(name, None)
        self.infos[name] = info = await asyncio.to_thread(certdir.info)
        log.info(
            "certificate for %s (fleet %s) from %s, renewed from %s",
            ", ".join(hosts),
            name,
            info.issuer if info else "?",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.renew_at)) if info else "?",
        )

    async def _listening(self, spec: AcmeSpec) -> None:
        """The plain listener answering challenges is up (or why it cannot be)."""
        result = await self.lb.flush()
        where = f"{spec.http[0]}:{spec.http[1]}"
        error = result.get("acme", {}).get("errors", {}).get(where)
        if error is not None:
            raise CertificateError(
                f"cannot answer ACME challenges on {where}: {error['message']}",
                hint=error.get("hint"),
            )
