"""Builds the whole server: one MultiService with a listener per configured endpoint."""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mailserver.accounts import Directory
from mailserver.config import Config
from mailserver.imap.protocol import IMAPFactory
from mailserver.imap.session import IMAPLimits
from mailserver.login import LoginService
from mailserver.mda import MDA
from mailserver.mta import InboundPolicy
from mailserver.pop3.protocol import POP3Factory
from mailserver.smtp.protocol import SMTPFactory
from mailserver.smtp.session import SMTPLimits
from mailserver.store.maildir import MaildirStore

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
        self.store = MaildirStore(
            config.resolve(config.store.maildir),
            hostname=config.server.hostname,
            quota_bytes=config.store.quota_bytes,
        )
        self.login = LoginService(self.directory)
        self.mda = MDA(self.store, self.directory)
        self.listeners: dict[str, list[ListenerService]] = {}
        listeners = config.listeners
        for role, descriptions, make_factory in (
            ("MTA", listeners.smtp, self._mta_factory),
            ("IMAP", listeners.imap, self._imap_factory),
            ("POP3", listeners.pop3, self._pop3_factory),
        ):
            if descriptions:
                # One factory per role: its limits and locks span all its listeners.
                factory = make_factory()
                for description in descriptions:
                    self.add_listener(role, description, factory)

    def _imap_factory(self) -> Factory:
        imap = self.config.imap
        limits = IMAPLimits(
            max_line=imap.max_line, max_literal=imap.max_literal, max_errors=imap.max_errors
        )
        return IMAPFactory(
            self.store,
            self.login,
            limits,
            imap.idle_timeout,
            self.config.server.hostname,
            self.reactor,
        )

    def _pop3_factory(self) -> Factory:
        return POP3Factory(self.store, self.login, self.config.pop3, self.config.server.hostname)

    def _mta_factory(self) -> Factory:
        smtp = self.config.smtp
        limits = SMTPLimits(
            max_command_line=smtp.max_command_line,
            max_text_line=smtp.max_text_line,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_errors=smtp.max_errors,
        )
        postmaster_domain = self.config.domains.local[0] if self.config.domains.local else ""
        return SMTPFactory(
            "MTA",
            self.config.server.hostname,
            limits,
            smtp.idle_timeout,
            InboundPolicy(self.directory, self.store),
            self.mda,
            f"postmaster@{postmaster_domain or self.config.server.hostname}",
        )

    def add_listener(self, role: str, description: str, factory: Factory) -> None:
        listener = ListenerService(role, description, factory, self.reactor)
        listener.setServiceParent(self)
        self.listeners.setdefault(role, []).append(listener)


def prepare_run_dir(config: Config) -> None:
    """Create the run directory, and the store from the sample on first start."""
    os.makedirs(config.resolve(config.server.run_dir), exist_ok=True)
    maildir = config.resolve(config.store.maildir)
    sample = config.resolve(config.store.sample)
    if not os.path.exists(maildir):
        if sample and os.path.isdir(sample):
            shutil.copytree(sample, maildir, ignore=shutil.ignore_patterns(".gitkeep"))
            log.info(
                "store created at {maildir} from the sample {sample}",
                maildir=maildir,
                sample=sample,
            )
        else:
            os.makedirs(maildir, mode=0o700)
