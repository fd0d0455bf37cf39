"""Twisted glue for IMAP: a factory whose connections run an IMAPSession."""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from mailserver.imap.session import (
    AppendMessage,
    CopyMessages,
    CreateFolder,
    FilesGone,
    IMAPLimits,
    IMAPSession,
    MeasureFolder,
    OpenFolder,
    Pause,
    ReadMessages,
    RefreshFolder,
    RenameFolder,
    ScreenMessages,
    SetFlags,
    UserSessions,
)
from mailserver.limits import LimitedFactory, SessionSpec, is_loopback, peer_host
from mailserver.login import LoginService
from mailserver.session import Authenticate, Effect
from mailserver.store.maildir import MaildirStore

log = Logger()

# How often a client in IDLE hears "* OK Still here" (Dovecot's default, too).
KEEPALIVE_INTERVAL = 120.0

# One registry of logged-in sessions per store, so that the plaintext and the TLS
# listeners (one factory each) count a user's sessions together.
_registries: weakref.WeakKeyDictionary[MaildirStore, UserSessions] = weakref.WeakKeyDictionary()


def sessions_for(store: MaildirStore) -> UserSessions:
    """The process-wide registry of IMAP sessions on this store."""
    registry = _registries.get(store)
    if registry is None:
        registry = _registries[store] = UserSessions()
    return registry


class KeepAlive:
    """RFC 2177 §3: "* OK Still here" to the IDLE sessions of one registry every
    KEEPALIVE_INTERVAL, while a session is logged in and a listener of the registry
    runs. The plaintext and the TLS listener share it, each holding it while it
    listens, so that stopping one does not stop the other's keep-alives."""

    def __init__(self, sessions: UserSessions, reactor: Any) -> None:
        self.sessions = sessions
        self.reactor = reactor
        self.listeners = 0
        self._loop: task.LoopingCall | None = None
        sessions.on_change = self._update

    def hold(self) -> None:
        self.listeners += 1
        self._update()

    def release(self) -> None:
        self.listeners -= 1
        self._update()

    def _update(self) -> None:
        if self.listeners > 0 and self.sessions.all():
            if self._loop is None:
                self._loop = task.LoopingCall(self._keep_alive)
                self._loop.clock = self.reactor
                self._loop.start(KEEPALIVE_INTERVAL, now=False)
        elif self._loop is not None:
            self._loop.stop()
            self._loop = None

    def _keep_alive(self) -> None:
        for session in self.sessions.all():
            session.keepalive()


_keepalives: weakref.WeakKeyDictionary[UserSessions, KeepAlive] = weakref.WeakKeyDictionary()


def keepalive_for(sessions: UserSessions, reactor: Any) -> KeepAlive:
    """The one keep-alive of this registry of sessions."""
    keepalive = _keepalives.get(sessions)
    if keepalive is None:
        keepalive = _keepalives[sessions] = KeepAlive(sessions, reactor)
    return keepalive


class IMAPFactory(LimitedFactory):
    refusal = b"* BYE Too many connections, try again later\r\n"

    def __init__(
        self,
        store: MaildirStore,
        login: LoginService,
        limits: IMAPLimits,
        idle_timeout: float,
        hostname: str,
        reactor: Any,
        max_connections: int = 1000,
        max_connections_per_client: int = 20,
        tls: Any = None,
        implicit_tls: bool = False,
        allow_plaintext_on_loopback: bool = False,
        sessions: UserSessions | None = None,
    ) -> None:
        super().__init__("IMAP", max_connections, max_connections_per_client)
        self.sessions = sessions if sessions is not None else sessions_for(store)
        self.keepalive = keepalive_for(self.sessions, reactor)
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback
        self.store = store
        self.login = login
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.hostname = hostname
        self.reactor = reactor

    def build_session(self, addr: IAddress, session_id: str) -> SessionSpec:
        peer = peer_host(addr)
        session = IMAPSession(
            self.hostname,
            session_id,
            self.limits,
            self.store,
            starttls=self.tls is not None and not self.implicit_tls,
            tls_active=self.implicit_tls,
            allow_plaintext_login=self.allow_plaintext_on_loopback and is_loopback(peer),
            sessions=self.sessions,
        )

        def logged(address: str | None, username: str) -> defer.Deferred[str] | None:
            log.info(
                "IMAP login {result} session={session} peer={peer} user={user!r}",
                result="ok" if address else "failed",
                session=session_id,
                peer=peer,
                user=address or username,
            )
            if address is None:
                return None
            # A user who never received mail gets INBOX and the default folders, made
            # in a thread, before the session goes on.
            return self.store.prepare_user(address).addCallback(lambda _: address)

        def run(effect: Effect) -> Any:
            if isinstance(effect, ReadMessages):
                return effect.folder.read_many(effect.uids)
            if isinstance(effect, ScreenMessages):
                return effect.folder.screen(effect.uids, effect.rule)
            if isinstance(effect, SetFlags):
                return effect.folder.set_flags_many(effect.changes, effect.then)
            if isinstance(effect, MeasureFolder):
                return effect.folder.measure()
            if isinstance(effect, FilesGone):
                return effect.folder.expunged()
            if isinstance(effect, RefreshFolder):
                return effect.folder.refresh()
            if isinstance(effect, OpenFolder):
                return self.store.open_folder(effect.address, effect.name)
            if isinstance(effect, CreateFolder):
                return self.store.create_folder(effect.address, effect.name)
            if isinstance(effect, RenameFolder):
                return self.store.rename_folder(effect.address, effect.old, effect.new)
            if isinstance(effect, Pause):
                return task.deferLater(self.reactor, 0, lambda: None)
            if isinstance(effect, AppendMessage):
                return self.store.deliver(
                    effect.address,
                    [effect.data],
                    effect.folder,
                    effect.flags,
                    effect.internal_date,
                )
            if isinstance(effect, CopyMessages):
                return self.store.copy_messages(effect.source, effect.uids, effect.dest)
            if isinstance(effect, Authenticate):
                d = self.login.login(effect.username, effect.password, "IMAP", peer)
                d.addCallback(logged, effect.username)
                return d
            raise TypeError(f"unknown effect {effect!r}")

        return SessionSpec(session, run, self.idle_timeout)

    def startFactory(self) -> None:
        self.keepalive.hold()

    def stopFactory(self) -> None:
        self.keepalive.release()
