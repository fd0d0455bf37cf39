"""Builds the whole server: one MultiService with a listener per configured endpoint."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.components import Componentized

from mailserver.accounts import Directory
from mailserver.config import Config, ConfigError
from mailserver.imap.protocol import IMAPFactory
from mailserver.imap.session import IMAPLimits
from mailserver.limits import LimitedFactory
from mailserver.login import LoginService
from mailserver.mda import MDA
from mailserver.msa import SubmissionPolicy
from mailserver.mta import InboundPolicy
from mailserver.pop3.protocol import POP3Factory
from mailserver.queue.service import QueueService
from mailserver.smtp.protocol import SMTPFactory, SMTPPolicy
from mailserver.smtp.session import SMTPLimits, SMTPRole
from mailserver.store.maildir import MaildirStore
from mailserver.store.worker import FileWorker
from mailserver.tls import ServerTLS, TLSConfigError, ensure_dev_certificate, load_options
from mailserver.trace import TRACE_FILE, Tracer

log = Logger()


class ListenerService(Service):
    """Listens on one endpoint string while running; ``listening`` fires with the port."""

    def __init__(self, role: str, description: str, factory: Factory, reactor: Any) -> None:
        self.role = role
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        log.info(
            "{role} listening on {host}:{port} ({description})",
            role=self.role,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            description=self.description,
        )
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        log.critical(
            "{role} cannot listen on {description}: {error}",
            role=self.role,
            description=self.description,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


class MailServer(MultiService):
    """The whole server; its parts are attributes so tests and tools can reach them."""

    # Seconds a session may take to close cleanly at shutdown before it is aborted
    # (a TLS client that never finishes its handshake, one that never reads).
    shutdown_grace = 3.0
    # The observer twistd is to log with (textlog.py), set by the plugin.
    log_observer: ILogObserver | None = None

    def __init__(self, config: Config, reactor: Any | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        prepare_run_dir(config)
        self.directory = Directory(
            config.domains.local,
            config.resolve(config.accounts.passwd_file),
            config.accounts.aliases,
            config.accounts.subaddress_separator,
        )
        self.file_worker = FileWorker(reactor)
        self.store = MaildirStore(
            config.resolve(config.store.maildir),
            hostname=config.server.hostname,
            quota_bytes=config.store.quota_bytes,
            worker=self.file_worker,
        )
        self.login = LoginService(self.directory, reactor, config.auth)
        self.mda = MDA(self.store, self.directory)
        self.tracer: Tracer | None = None
        if config.server.trace:
            # Started first (MultiService order), so it sees every listener's sessions.
            self.tracer = Tracer(
                full_bodies=config.server.trace_bodies == "full",
                path=os.path.join(config.resolve(config.server.run_dir), TRACE_FILE),
                reactor=reactor,
            )
            self.tracer.setServiceParent(self)
            self.mda.tracer = self.tracer
        self.tls = make_tls(config)
        # The queue starts before the listeners that feed it (MultiService order).
        self.queue = QueueService(config, self.mda.deliver, reactor, tracer=self.tracer)
        self.queue.setServiceParent(self)
        self.listeners: dict[str, list[ListenerService]] = {}
        self.factories: list[LimitedFactory] = []
        # RFC 2449 §8.1.2 [IN-USE]: the maildrop locks, for POP3 and POP3S alike.
        self.pop3_locks: set[str] = set()
        listeners = config.listeners
        for name, role, implicit_tls, make_factory in (
            ("smtp", "MTA", False, self._mta_factory),
            ("submission", "MSA", False, self._msa_factory),
            ("submissions", "MSA", True, self._msa_factory),
            ("imap", "IMAP", False, self._imap_factory),
            ("imaps", "IMAP", True, self._imap_factory),
            ("pop3", "POP3", False, self._pop3_factory),
            ("pop3s", "POP3", True, self._pop3_factory),
        ):
            descriptions = getattr(listeners, name)
            if not descriptions:
                continue
            # One factory per listener kind: its limits and locks span all its endpoints.
            sessions = make_factory(implicit_tls)
            sessions.tracer = self.tracer
            sessions.implicit_tls = implicit_tls
            self.factories.append(sessions)
            factory: Factory = sessions
            if implicit_tls:
                # RFC 8314: the TLS handshake comes first, then the protocol.
                factory = TLSMemoryBIOFactory(self.tls, False, sessions)
            for description in descriptions:
                self.add_listener(name, role, description, factory)

    def setServiceParent(self, parent: Any) -> None:
        """twistd adds us to the application it made just before it starts logging, and
        logs with the application's ILogObserver if it has one."""
        if (
            self.log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        self.file_worker.start()
        # SIGHUP re-reads the certificate and key without dropping sessions.
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.tls.reload))

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, then close the sessions still open and wait until they are."""
        d = defer.maybeDeferred(super().stopService)

        def close_sessions(_: object) -> defer.Deferred:
            closing = [f.close_all(self.reactor, self.shutdown_grace) for f in self.factories]
            return defer.DeferredList(closing)

        d.addCallback(close_sessions)
        d.addCallback(lambda _: self.file_worker.stop())
        return d

    def _plaintext_on_loopback(self) -> bool:
        return self.config.auth.allow_plaintext_on_loopback

    def _imap_factory(self, implicit_tls: bool) -> LimitedFactory:
        imap = self.config.imap
        limits = IMAPLimits(
            max_line=imap.max_line,
            max_literal=imap.max_literal,
            max_errors=imap.max_errors,
            max_sessions_per_user=imap.max_sessions_per_user,
        )
        return IMAPFactory(
            self.store,
            self.login,
            limits,
            imap.idle_timeout,
            self.config.server.hostname,
            self.reactor,
            imap.max_connections,
            imap.max_connections_per_client,
            tls=self.tls,
            implicit_tls=implicit_tls,
            allow_plaintext_on_loopback=self._plaintext_on_loopback(),
        )

    def _pop3_factory(self, implicit_tls: bool) -> LimitedFactory:
        return POP3Factory(
            self.store,
            self.login,
            self.config.pop3,
            self.config.server.hostname,
            tls=self.tls,
            implicit_tls=implicit_tls,
            allow_plaintext_on_loopback=self._plaintext_on_loopback(),
            locks=self.pop3_locks,
        )

    def _smtp_limits(self) -> SMTPLimits:
        smtp = self.config.smtp
        return SMTPLimits(
            max_command_line=smtp.max_command_line,
            max_text_line=smtp.max_text_line,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_errors=smtp.max_errors,
        )

    def _smtp_factory(self, role: SMTPRole, policy: SMTPPolicy) -> LimitedFactory:
        smtp = self.config.smtp
        domains = self.config.domains.local
        postmaster_domain = domains[0] if domains else self.config.server.hostname
        return SMTPFactory(
            role,
            self.config.server.hostname,
            self._smtp_limits(),
            smtp.idle_timeout,
            policy,
            f"postmaster@{postmaster_domain}",
            self.login,
            tls=self.tls,
            allow_plaintext_on_loopback=self._plaintext_on_loopback(),
            max_connections=smtp.max_connections,
            max_connections_per_client=smtp.max_connections_per_client,
        )

    def _mta_factory(self, implicit_tls: bool) -> LimitedFactory:
        # The MTA offers STARTTLS and never AUTH, whatever a client claims.
        role = SMTPRole("MTA", starttls=True)
        return self._smtp_factory(role, InboundPolicy(self.directory, self.store, self.mda))

    def _msa_factory(self, implicit_tls: bool) -> LimitedFactory:
        role = SMTPRole(
            "MSA",
            starttls=not implicit_tls,
            tls_active=implicit_tls,
            auth=True,
            require_auth=True,
            dsn=True,
        )
        policy = SubmissionPolicy(
            self.directory, self.store, self.mda, self.config.server.hostname, self.queue
        )
        return self._smtp_factory(role, policy)

    def add_listener(self, name: str, role: str, description: str, factory: Factory) -> None:
        """Listen on an endpoint; ``name`` is the [listeners] key, ``role`` for the log."""
        listener = ListenerService(role, description, factory, self.reactor)
        listener.setServiceParent(self)
        self.listeners.setdefault(name, []).append(listener)


def check_tls_files(config: Config) -> None:
    """Raise ConfigError naming [tls] when a configured certificate or key is unusable."""
    if config.tls.cert_file:
        cert, key = config.resolve(config.tls.cert_file), config.resolve(config.tls.key_file)
        try:
            load_options(cert, key)
        except TLSConfigError as e:
            raise ConfigError(f"{config.path}: [tls]: {e}") from None


def make_tls(config: Config) -> ServerTLS:
    """The configured certificate, or a development one made in the run directory."""
    if config.tls.cert_file:
        cert, key = config.resolve(config.tls.cert_file), config.resolve(config.tls.key_file)
    else:
        directory = os.path.join(config.resolve(config.server.run_dir), "tls")
        try:
            _, cert, key = ensure_dev_certificate(directory, config.server.hostname)
        except OSError as e:
            raise ConfigError(
                f"{config.path}: [tls]: cannot make a development certificate in "
                f"{directory}: {e.strerror}"
            ) from None
    try:
        return ServerTLS(cert, key)
    except TLSConfigError as e:
        raise ConfigError(f"{config.path}: [tls]: {e}") from None


def prepare_run_dir(config: Config) -> None:
    """Create the run directory, and the store from the sample on first start.

    A directory that cannot be made raises ConfigError naming the key."""
    run_dir = config.resolve(config.server.run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{config.path}: [server] run_dir: {run_dir}: {e.strerror}") from None
    maildir = config.resolve(config.store.maildir)
    sample = config.resolve(config.store.sample)
    if os.path.exists(maildir):
        return
    if sample and not os.path.isdir(sample):
        raise ConfigError(f"{config.path}: [store] sample: {sample}: no such directory")
    try:
        if sample:
            shutil.copytree(sample, maildir, ignore=shutil.ignore_patterns(".gitkeep"))
            log.info(
                "store created at {maildir} from the sample {sample}",
                maildir=maildir,
                sample=sample,
            )
        else:
            os.makedirs(maildir, mode=0o700)
    except OSError as e:
        raise ConfigError(f"{config.path}: [store] maildir: {maildir}: {e.strerror}") from None
