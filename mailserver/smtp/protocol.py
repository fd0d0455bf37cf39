"""Twisted glue for SMTP: a factory whose connections run an SMTPSession."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver.limits import LimitedFactory, SessionSpec, is_loopback, peer_host
from mailserver.login import LoginService
from mailserver.session import Authenticate, Effect
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import (
    CheckRecipient,
    CheckSender,
    DeliverMessage,
    Envelope,
    SMTPLimits,
    SMTPRole,
    SMTPSession,
)

log = Logger()


class SMTPPolicy(Protocol):
    """Who may send what to whom, and where accepted mail goes (MTA or MSA)."""

    def check_sender(self, envelope: Envelope, address: str) -> Reply: ...

    def check_recipient(self, envelope: Envelope, address: str) -> Reply: ...

    def deliver(self, envelope: Envelope, chunks: Sequence[bytes]) -> defer.Deferred[Reply]: ...


class SMTPFactory(LimitedFactory):
    """Builds one session per connection for one role (MTA, or MSA on 587 or 465)."""

    refusal = b"421 4.7.0 Too many connections, try again later\r\n"

    def __init__(
        self,
        role: SMTPRole,
        hostname: str,
        limits: SMTPLimits,
        idle_timeout: float,
        policy: SMTPPolicy,
        postmaster: str,
        login: LoginService,
        tls: Any = None,
        allow_plaintext_on_loopback: bool = False,
        max_connections: int = 1000,
        max_connections_per_client: int = 20,
    ) -> None:
        super().__init__(role.name, max_connections, max_connections_per_client)
        self.smtp_role = role
        self.hostname = hostname
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.policy = policy
        self.postmaster = postmaster
        self.login = login
        self.tls = tls
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback

    def build_session(self, addr: IAddress, session_id: str) -> SessionSpec:
        peer = peer_host(addr)
        role = self.smtp_role
        if self.allow_plaintext_on_loopback and is_loopback(peer) and role.auth:
            role = SMTPRole(**{**role.__dict__, "plaintext_auth": True})
        session = SMTPSession(
            self.hostname, peer, session_id, self.limits, self.postmaster, role=role
        )

        def run(effect: Effect) -> Any:
            return self.run_effect(effect, session_id, peer)

        return SessionSpec(session, run, self.idle_timeout)

    def run_effect(self, effect: Effect, session_id: str, peer: str) -> Any:
        # The checks answer at once (the directory is in memory): a plain Reply resumes
        # the session without a Deferred (driver.py), and one that raises is a Failure.
        if isinstance(effect, CheckSender):
            reply = self.policy.check_sender(effect.envelope, effect.address)
            return self._logged(reply, "mail", session_id, effect.address)
        if isinstance(effect, CheckRecipient):
            reply = self.policy.check_recipient(effect.envelope, effect.address)
            return self._logged(reply, "rcpt", session_id, effect.address)
        if isinstance(effect, DeliverMessage):
            env = effect.envelope
            d = defer.maybeDeferred(self.policy.deliver, env, effect.chunks)
            d.addErrback(self._failed, env)
            d.addCallback(self._transaction_logged, env, sum(map(len, effect.chunks)))
            return d
        if isinstance(effect, Authenticate):
            d = self.login.login(effect.username, effect.password, self.role, peer)
            d.addCallback(self._auth_logged, session_id, peer, effect.username)
            return d
        raise TypeError(f"unknown effect {effect!r}")

    def _logged(self, reply: Reply, step: str, session_id: str, address: str) -> Reply:
        """A refused MAIL or RCPT gets a line; accepted ones are in the transaction's."""
        if reply.code < 400:
            return reply
        log.info(
            "{role} {step} session={session} address=<{address}> result={code} {text}",
            role=self.role,
            step=step,
            session=session_id,
            address=address,
            code=reply.code,
            text=reply.lines()[0],
        )
        return reply

    def _transaction_logged(self, reply: Reply, env: Envelope, size: int) -> Reply:
        log.info(
            "{role} data session={session} from=<{sender}> to={recipients} size={size}"
            " result={code} {text}",
            role=self.role,
            session=env.session_id,
            sender=env.mail_from,
            recipients=",".join(f"<{r}>" for r in env.rcpt_to),
            size=size,
            code=reply.code,
            text=reply.lines()[0],
        )
        return reply

    def _auth_logged(self, address: str | None, session_id: str, peer: str, user: str) -> Any:
        log.info(
            "{role} auth {result} session={session} peer={peer} user={user!r}",
            role=self.role,
            result="ok" if address else "failed",
            session=session_id,
            peer=peer,
            user=address or user,
        )
        return address

    def _failed(self, failure: Failure, env: Envelope) -> Reply:
        log.failure(
            "{role} delivery failed session={session}",
            failure,
            role=self.role,
            session=env.session_id,
        )
        return Reply(451, "4.3.0", "Local error in processing, try again later")
