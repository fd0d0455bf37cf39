"""Twisted glue for SMTP: a factory whose connections run an SMTPSession."""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver.driver import SessionProtocol
from mailserver.session import Effect
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import (
    CheckRecipient,
    DeliverMessage,
    Envelope,
    SMTPLimits,
    SMTPSession,
)

log = Logger()


class RecipientPolicy(Protocol):
    def check_recipient(self, envelope: Envelope, address: str) -> Reply | defer.Deferred: ...


class Deliverer(Protocol):
    def deliver(
        self, mail_from: str, recipients: list[str], chunks: Any, session_id: str
    ) -> defer.Deferred: ...


def new_session_id() -> str:
    return secrets.token_hex(6)


def peer_host(addr: IAddress) -> str:
    return getattr(addr, "host", str(addr))


class SMTPFactory(Factory):
    """Builds one SessionProtocol per connection for a role (MTA or MSA)."""

    def __init__(
        self,
        role: str,
        hostname: str,
        limits: SMTPLimits,
        idle_timeout: float,
        policy: RecipientPolicy,
        deliverer: Deliverer,
        postmaster: str,
    ) -> None:
        self.role = role
        self.hostname = hostname
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.policy = policy
        self.deliverer = deliverer
        self.postmaster = postmaster

    def buildProtocol(self, addr: IAddress) -> SessionProtocol:
        session_id = new_session_id()
        peer = peer_host(addr)
        session = SMTPSession(self.hostname, peer, session_id, self.limits, self.postmaster)
        log.info(
            "{role} connect session={session} peer={peer}",
            role=self.role,
            session=session_id,
            peer=peer,
        )

        def run(effect: Effect) -> Any:
            return self.run_effect(effect, session_id, peer)

        proto = SessionProtocol(session, run, self.idle_timeout)
        proto.factory = self
        return proto

    def run_effect(self, effect: Effect, session_id: str, peer: str) -> Any:
        if isinstance(effect, CheckRecipient):
            d = defer.maybeDeferred(self.policy.check_recipient, effect.envelope, effect.address)
            d.addCallback(self._log_rcpt, effect, session_id)
            return d
        if isinstance(effect, DeliverMessage):
            env = effect.envelope
            d = defer.maybeDeferred(
                self.deliverer.deliver, env.mail_from, env.rcpt_to, effect.chunks, session_id
            )
            d.addCallbacks(self._accepted, self._failed, (env,), None, (env,))
            return d
        raise TypeError(f"unknown effect {effect!r}")

    def _log_rcpt(self, reply: Reply, effect: CheckRecipient, session_id: str) -> Reply:
        log.info(
            "{role} rcpt session={session} from=<{sender}> to=<{rcpt}> result={code} {text}",
            role=self.role,
            session=session_id,
            sender=effect.envelope.mail_from,
            rcpt=effect.address,
            code=reply.code,
            text=reply.lines()[0],
        )
        return reply

    def _accepted(self, result: Any, env: Envelope) -> Reply:
        log.info(
            "{role} accepted session={session} from=<{sender}> rcpts={count}",
            role=self.role,
            session=env.session_id,
            sender=env.mail_from,
            count=len(env.rcpt_to),
        )
        return Reply(250, "2.0.0", f"OK queued as {env.session_id}")

    def _failed(self, failure: Failure, env: Envelope) -> Reply:
        log.failure(
            "{role} delivery failed session={session}",
            failure,
            role=self.role,
            session=env.session_id,
        )
        return Reply(451, "4.3.0", "Local error in processing, try again later")
