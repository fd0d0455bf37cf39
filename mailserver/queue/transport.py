"""How one message leaves for one destination domain: MX hosts in order, or a smarthost.

RFC 5321 §5.1: the hosts are tried in MX order; a connection failure or a 4xx sends the
recipients still open to the next host. What no host settled is left for a later attempt.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.logger import Logger

from mailserver.queue.downgrade import to_7bit
from mailserver.queue.mx import MXHost, MXResolver, RouteError
from mailserver.smtp.client import (
    ClientSession,
    ClientTimeouts,
    OutboundMessage,
    Outcome,
    Result,
    TLSPolicy,
    describe,
)
from mailserver.smtp.client_protocol import deliver
from mailserver.smtp.reply import Reply
from mailserver.trace import Tracer

log = Logger()

# Addresses tried for one domain in one attempt (Postfix tries at most 5 sessions).
MAX_TRIES = 5


@dataclass(frozen=True)
class Delivery:
    """What became of one recipient in one attempt."""

    result: Result
    reply: Reply
    remote: str = ""  # the host that answered, "name [address]"
    dsn_passed_on: bool = False  # the remote took NOTIFY/ORCPT (RFC 3461 §4)


@dataclass(frozen=True)
class TransportSettings:
    hostname: str  # ours, for EHLO
    port: int = 25
    mx_tls: TLSPolicy = TLSPolicy.OPPORTUNISTIC
    verify_mx: bool = False
    relay_host: str = ""  # "name" when all mail goes to a smarthost
    relay_port: int = 587
    relay_implicit_tls: bool = False  # RFC 8314 §3.3: TLS at connect (port 465)
    credentials: tuple[str, str] | None = None
    trust_root: Any = None  # a twisted IOpenSSLTrustRoot; None: the platform's
    connect_timeout: float = 30.0
    timeouts: ClientTimeouts = dataclasses.field(default_factory=ClientTimeouts)


class SMTPTransport:
    def __init__(
        self,
        reactor: Any,
        settings: TransportSettings,
        resolver: MXResolver,
        tracer: Tracer | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.resolver = resolver
        self.tracer = tracer  # trace mode: each outbound connection's lines

    def deliver(
        self, domain: str, message: OutboundMessage, queue_id: str
    ) -> defer.Deferred[dict[str, Delivery]]:
        return defer.ensureDeferred(self._deliver(domain, message, queue_id))

    async def _deliver(
        self, domain: str, message: OutboundMessage, queue_id: str
    ) -> dict[str, Delivery]:
        settings = self.settings
        results: dict[str, Delivery] = {}
        try:
            hosts = await self._hosts(domain)
        except RouteError as e:
            log.info(
                "queue {id} to {domain}: {reply}",
                id=queue_id,
                domain=domain,
                reply=describe(e.reply),
            )
            result = Result.PERMANENT if e.reply.permanent else Result.TEMPORARY
            return {r.address: Delivery(result, e.reply) for r in message.recipients}
        tries = [(host, address) for host in hosts for address in host.addresses][:MAX_TRIES]
        converted = False
        for host, address in tries:
            remote = f"{host.name} [{address}]"
            outcome = await self._session(host, address, message, queue_id, settings.mx_tls)
            if outcome.needs_7bit and not converted:
                # RFC 6152 §3: this host does not take 8 bits. Converted once (off the
                # reactor), the message goes to it again, and to any host after it, in 7
                # bits; if it cannot be converted, the 5.6.3 stands.
                converted = True
                seven_bit = await self._seven_bit(message)
                if seven_bit is not None:
                    log.info(
                        "queue {id}: {remote} does not announce 8BITMIME, sending it in 7 bits",
                        id=queue_id,
                        remote=remote,
                    )
                    message = seven_bit
                    outcome = await self._session(host, address, message, queue_id, settings.mx_tls)
            if (
                outcome.tls_failed
                and not settings.relay_host
                and settings.mx_tls is (TLSPolicy.OPPORTUNISTIC)
            ):
                # RFC 7435 §3: opportunistic TLS must not make mail undeliverable; after
                # a failed handshake the same host is tried again without TLS.
                log.info(
                    "queue {id}: TLS with {remote} failed, trying it without TLS",
                    id=queue_id,
                    remote=remote,
                )
                outcome = await self._session(host, address, message, queue_id, TLSPolicy.NEVER)
            still_open = []
            for rcpt in message.recipients:
                got = outcome.recipients[rcpt.address]
                results[rcpt.address] = Delivery(
                    got.result, got.reply, remote, outcome.dsn_supported
                )
                log.info(
                    "queue {id} to <{rcpt}> via {remote}: {result}: {reply}",
                    id=queue_id,
                    rcpt=rcpt.address,
                    remote=remote,
                    result=got.result.value,
                    reply=describe(got.reply),
                )
                if got.result is Result.TEMPORARY:
                    still_open.append(rcpt)
            if not still_open:
                break
            message = dataclasses.replace(message, recipients=tuple(still_open))
        return results

    async def _seven_bit(self, message: OutboundMessage) -> OutboundMessage | None:
        """The message converted to 7 bits (in a thread: it reads every octet), or None
        when it cannot be (8-bit header fields, ...)."""
        converted = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), to_7bit, b"".join(message.chunks)
        )
        if converted is None:
            return None
        return dataclasses.replace(message, chunks=(converted,))

    async def _session(
        self,
        host: MXHost,
        address: str,
        message: OutboundMessage,
        queue_id: str,
        mx_tls: TLSPolicy,
    ) -> Outcome:
        """One connection to one address of a host, delivering ``message``."""
        settings = self.settings
        relay = bool(settings.relay_host)
        implicit = relay and settings.relay_implicit_tls
        session = ClientSession(
            settings.hostname,
            message,
            tls=TLSPolicy.REQUIRED if relay else mx_tls,
            credentials=settings.credentials if relay else None,
            timeouts=settings.timeouts,
            implicit_tls=implicit,
        )
        return await deliver(
            self.reactor,
            address,
            settings.relay_port if relay else settings.port,
            session,
            self._tls_options(host.name),
            settings.connect_timeout,
            self.tracer.connection("OUT", queue_id) if self.tracer else None,
            implicit_tls=implicit,
        )

    async def _hosts(self, domain: str) -> list[MXHost]:
        relay = self.settings.relay_host
        if not relay:
            return await self.resolver.route(domain)
        try:
            ipaddress.ip_address(relay)
            addresses: tuple[str, ...] = (relay,)
        except ValueError:
            addresses = await self.resolver.lookup_relay(relay)
        if not addresses:
            raise RouteError(Reply(451, "4.4.4", f"the relay host {relay} has no address"))
        return [MXHost(relay, 0, addresses)]

    def _tls_options(self, name: str) -> Any:
        settings = self.settings
        if settings.relay_host or settings.verify_mx:
            # The certificate must chain to a trusted root and name this host.
            return optionsForClientTLS(name, trustRoot=settings.trust_root)
        # RFC 3207 §4.1 / RFC 7435: opportunistic TLS does not verify (better than plain).
        return CertificateOptions()
