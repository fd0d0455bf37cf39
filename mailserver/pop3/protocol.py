"""The Twisted side of POP3: the factory, the per-connection effect runner, the lock.

A maildrop is locked from a successful login (OpenMaildrop) until QUIT has applied the
deletions (CommitDeletes) or the connection is gone, whichever comes first; a lost
connection applies nothing (RFC 1939 §6). The lock only keeps POP3 sessions apart, in
this process: IMAP sessions may still change the folder, and a message that vanished
under a POP3 session answers "-ERR cannot read message".
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver.config import POP3Config
from mailserver.limits import LimitedFactory, SessionSpec, is_loopback, peer_host
from mailserver.login import LoginService
from mailserver.pop3.session import (
    CommitDeletes,
    MaildropEntry,
    MaildropInUse,
    OpenMaildrop,
    POP3Session,
    ReadMessage,
    unique_id_for,
)
from mailserver.session import Authenticate, Effect
from mailserver.store.maildir import Folder, MaildirStore
from mailserver.store.readahead import ReadAhead

log = Logger()
ROLE = "POP3"


class POP3Connection:
    """Runs one connection's effects and holds its maildrop lock."""

    def __init__(self, factory: POP3Factory, session_id: str, peer: str) -> None:
        self.factory = factory
        self.session_id = session_id
        self.peer = peer
        self.folder: Folder | None = None
        self.locked: str | None = None  # the address whose lock we hold
        self.reader = ReadAhead()
        # Summed up in one log line when the maildrop is released, as Dovecot's
        # pop3_logout_format does: a line per RETR costs more than the RETR itself.
        self.retrieved = 0
        self.retrieved_bytes = 0
        self.deleted = 0

    def run(self, effect: Effect) -> Any:
        """The driver's effect runner: a result, a Deferred, or an exception."""
        if isinstance(effect, Authenticate):
            return self._authenticate(effect)
        if isinstance(effect, OpenMaildrop):
            return self._open(effect.address)
        if isinstance(effect, ReadMessage):
            return self._read(effect.uid, effect.upcoming)
        if isinstance(effect, CommitDeletes):
            return self._commit(effect.uids)
        raise TypeError(f"POP3 cannot run {effect!r}")

    def connection_lost(self) -> None:
        """Give the lock back without applying any deletion (RFC 1939 §6)."""
        self._release()

    def _log(self, text: str, **fields: Any) -> None:
        log.info(
            "{role} " + text + " session={session} peer={peer}",
            role=ROLE,
            session=self.session_id,
            peer=self.peer,
            **fields,
        )

    def _authenticate(self, effect: Authenticate) -> defer.Deferred[str | None]:
        d = self.factory.login_service.login(effect.username, effect.password, ROLE, self.peer)

        def logged(address: str | None) -> str | None:
            if address is None:
                self._log("login failed user={user!r}", user=effect.username)
            else:
                self._log("login ok user={user}", user=address)
            return address

        d.addCallback(logged)
        return d

    def _open(self, address: str) -> defer.Deferred[list[MaildropEntry]]:
        locks = self.factory.locks
        if address in locks:
            self._log("maildrop in use user={user}", user=address)
            raise MaildropInUse(address)
        locks.add(address)
        self.locked = address

        def failed(failure: Failure) -> Failure:
            self._release()
            return failure

        # A user who never received mail gets a Maildir, made in a thread.
        d = self.factory.store.prepare_user(address)
        d.addCallback(lambda _: self._list(address))
        d.addErrback(failed)
        return d

    def _list(self, address: str) -> defer.Deferred[list[MaildropEntry]]:
        # Loaded in a thread the first time (a large maildrop would hold the reactor).
        return self.factory.store.open_folder(address).addCallback(self._listed)

    def _listed(self, folder: Folder) -> defer.Deferred[list[MaildropEntry]]:
        self.folder = folder

        def listed(_: None) -> list[MaildropEntry]:
            return [MaildropEntry(m.uid, unique_id_for(m.base), m.size) for m in folder.messages]

        # RFC 1939 §5 STAT and LIST give sizes: files other programs wrote are read first.
        d = folder.refresh()
        d.addCallback(lambda _: folder.measure())
        return d.addCallback(listed)

    def _read(self, uid: int, upcoming: tuple[int, ...]) -> bytes | defer.Deferred[bytes]:
        """The message, at once when it was read ahead (no Deferred: the usual case of
        a client downloading its maildrop, one RETR after the other)."""
        assert self.folder is not None, "ReadMessage before OpenMaildrop"
        data = self.reader.take(self.folder, uid)
        if data is not None:
            return self._counted(data)

        def failed(failure: Failure) -> Failure:
            self._log("retr failed uid={uid}: {error}", uid=uid, error=failure.getErrorMessage())
            return failure

        d = self.reader.read(self.folder, uid, upcoming)
        d.addCallbacks(self._counted, failed)
        return d

    def _counted(self, data: bytes) -> bytes:
        self.retrieved += 1
        self.retrieved_bytes += len(data)
        return data

    def _commit(self, uids: tuple[int, ...]) -> defer.Deferred[list[int]]:
        """Apply the deletions; RFC 1939 §6: the +OK to QUIT comes once the files are gone."""
        assert self.folder is not None, "CommitDeletes before OpenMaildrop"
        try:
            removed = self.folder.expunge(uids)
        except Exception as e:
            self._log("dele failed uids={uids}: {error}", uids=list(uids), error=e)
            self._release()
            raise
        self.deleted = len(removed)
        d = self.folder.expunged()
        d.addBoth(lambda result: (self._release(), result)[1])
        d.addCallback(lambda _: removed)
        return d

    def _release(self) -> None:
        if self.locked is not None:
            self.factory.locks.discard(self.locked)
            self._log(
                "maildrop released user={user} retr={retr}/{octets} dele={dele}",
                user=self.locked,
                retr=self.retrieved,
                octets=self.retrieved_bytes,
                dele=self.deleted,
            )
            self.locked = None
        self.folder = None


class POP3Factory(LimitedFactory):
    """Builds one session and one POP3Connection per client."""

    refusal = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"

    def __init__(
        self,
        store: MaildirStore,
        login_service: LoginService,
        config: POP3Config,
        hostname: str,
        tls: Any = None,
        implicit_tls: bool = False,
        allow_plaintext_on_loopback: bool = False,
        locks: set[str] | None = None,
    ) -> None:
        super().__init__(ROLE, config.max_connections, config.max_connections_per_client)
        self.implicit_tls = implicit_tls
        self.store = store
        self.login_service = login_service
        self.config = config
        self.hostname = hostname
        self.tls = tls
        self.allow_plaintext_on_loopback = allow_plaintext_on_loopback
        # Addresses whose maildrop a session holds; shared by the POP3 and POP3S
        # listeners, so that one maildrop has one session whichever port it came by.
        self.locks: set[str] = locks if locks is not None else set()

    def build_session(self, addr: IAddress, session_id: str) -> SessionSpec:
        peer = peer_host(addr)
        session = POP3Session(
            self.config,
            self.hostname,
            session_id,
            allow_plaintext_login=self.allow_plaintext_on_loopback and is_loopback(peer),
            starttls=self.tls is not None and not self.implicit_tls,
            tls_active=self.implicit_tls,
        )
        connection = POP3Connection(self, session_id, peer)
        return SessionSpec(
            session, connection.run, self.config.idle_timeout, [connection.connection_lost]
        )
