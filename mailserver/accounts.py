"""Users, domains and aliases.

Users live in a Dovecot-style passwd-file, one per line::

    alice@example.test:{BLF-CRYPT}$2y$10$...[:uid:gid:gecos:home:shell:extra]

Only the first two fields are used. The ``{SCHEME}`` prefix is Dovecot's; the hash after
it is checked with passlib, so hashes made by ``doveadm pw`` work unchanged. Password
checks are slow on purpose and run in a thread, never on the reactor.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from passlib.context import CryptContext
from passlib.hash import bcrypt
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.internet import defer, threads
from zope.interface import Interface, implementer

from mailserver import crypt3
from mailserver.config import Config, ConfigError
from mailserver.names import BadName, normalize_address, split_address

# Dovecot scheme names → passlib handlers.
_SCHEMES = {
    "BLF-CRYPT": "bcrypt",
    "BCRYPT": "bcrypt",
    "SHA512-CRYPT": "sha512_crypt",
    "SHA256-CRYPT": "sha256_crypt",
    "ARGON2I": "argon2",
    "ARGON2ID": "argon2",
}
# SHA-crypt hashes go to the C library when it is there (crypt3.py says why).
_LIBC_PREFIXES = {"SHA512-CRYPT": ("$6$",), "SHA256-CRYPT": ("$5$",), None: ("$5$", "$6$")}
_CONTEXT = CryptContext(schemes=["bcrypt", "argon2", "sha512_crypt", "sha256_crypt"])
NEW_HASH_SCHEME = "BLF-CRYPT"
_NEW_HASHER = bcrypt.using(rounds=10, ident="2y")
# A real hash to check against when the user does not exist, so that a login for an
# unknown user costs as much time as one for a known user (no user enumeration).
_DUMMY_HASH = _NEW_HASHER.hash("not a password")
MAX_ALIAS_DEPTH = 10


def hash_password(password: str) -> str:
    """A new hash in the passwd-file format (``{BLF-CRYPT}$2y$...``)."""
    return "{" + NEW_HASH_SCHEME + "}" + _NEW_HASHER.hash(password)


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a stored ``{SCHEME}hash``; blocks, run it in a thread."""
    scheme = None
    if stored.startswith("{") and "}" in stored:
        scheme, _, stored = stored[1:].partition("}")
        scheme = scheme.upper()
    if scheme == "PLAIN":
        return hmac.compare_digest(password.encode(), stored.encode())
    if crypt3.crypt is not None and stored.startswith(_LIBC_PREFIXES.get(scheme, ())):
        if "\0" in password:
            return False  # C strings end at NUL: "secret\0x" must not pass as "secret"
        computed = crypt3.crypt(password, stored)
        return computed is not None and hmac.compare_digest(computed, stored)
    try:
        if scheme in _SCHEMES:
            return bool(_CONTEXT.handler(_SCHEMES[scheme]).verify(password, stored))
        return bool(_CONTEXT.verify(password, stored))
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Account:
    address: str
    password_hash: str


class PasswdFileError(Exception):
    pass


def read_passwd(path: str) -> dict[str, Account]:
    """Parse a passwd-file into accounts keyed by their lower-cased address."""
    accounts: dict[str, Account] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, rest = line.partition(":")
            if not sep:
                raise PasswdFileError(f"{path}:{number}: expected user:password")
            try:
                address = normalize_address(user.strip())
            except BadName as e:
                raise PasswdFileError(f"{path}:{number}: {e}") from None
            accounts[address.lower()] = Account(address, rest.split(":", 1)[0])
    return accounts


def check_passwd_file(config: Config) -> None:
    """Raise ConfigError naming the key when the configured passwd-file is unusable."""
    path = config.resolve(config.accounts.passwd_file)
    try:
        read_passwd(path)
    except OSError as e:
        raise ConfigError(f"{config.path}: [accounts] passwd_file: {path}: {e.strerror}") from None
    except PasswdFileError as e:
        raise ConfigError(f"{config.path}: [accounts] passwd_file: {e}") from None


class UserExists(PasswdFileError):
    """``user add`` for an address that has an account already."""


class NoSuchUser(PasswdFileError):
    """``user passwd`` for an address without an account."""


def set_password(path: str, address: str, password_hash: str, *, add: bool) -> None:
    """Add a user (``add``) or change a user's hash, editing the passwd-file atomically.

    The edit runs under an exclusive lock on ``<path>.lock``, so concurrent edits never
    lose each other's lines; it writes a temporary file in the same directory, fsyncs it,
    renames it over the file and fsyncs the directory, so a reader sees the old file or
    the new one, never a half-written one. Other lines (comments, Dovecot's extra fields
    after the hash) are kept as they are.
    """
    directory = os.path.dirname(os.path.abspath(path))
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            # The owner and group keep their rights (Dovecot may read it as a group);
            # password hashes are never left readable by everyone.
            mode = stat.S_IMODE(os.stat(path).st_mode) & ~0o007
        except FileNotFoundError:
            lines, mode = [], 0o600
        lines = _edited(path, lines, address, password_hash, add)
        fd, tmp = tempfile.mkstemp(prefix=".passwd.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _edited(path: str, lines: list[str], address: str, password_hash: str, add: bool) -> list[str]:
    """The passwd-file's lines with ``address``'s hash set (appended when ``add``)."""
    key = address.lower()
    for number, line in enumerate(lines):
        user, sep, rest = line.partition(":")
        if not sep or line.lstrip().startswith("#") or _key(user) != key:
            continue
        if add:
            raise UserExists(f"{address} exists already")
        _, sep, extra = rest.partition(":")
        return [*lines[:number], f"{user}:{password_hash}{sep}{extra}", *lines[number + 1 :]]
    if not add:
        raise NoSuchUser(f"no such user {address} in {path}")
    return [*lines, f"{address}:{password_hash}"]


def _key(user: str) -> str | None:
    try:
        return normalize_address(user.strip()).lower()
    except BadName:
        return None


# A lookup looks at the passwd-file's mtime at most this often: an edit takes effect
# within this many seconds, and a busy MTA does not stat the file for every address it
# resolves (four times a message).
RECHECK_SECONDS = 1.0


class Directory:
    """Who is local: the local domains, the accounts of the passwd-file, the aliases.

    The passwd-file is re-read when it changes on disk, so ``mailserver user add`` takes
    effect without a restart (within RECHECK_SECONDS).
    """

    def __init__(
        self,
        domains: tuple[str, ...],
        passwd_file: str,
        aliases: Mapping[str, tuple[str, ...]] | None = None,
        subaddress_separator: str = "+",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        self.passwd_file = passwd_file
        self.aliases = {normalize_address(k).lower(): v for k, v in (aliases or {}).items()}
        self.separator = subaddress_separator
        self._accounts: dict[str, Account] = {}
        self._stamp: tuple[int, int] | None = None
        self._clock = clock
        self._checked_at = clock()
        self.reload()

    def reload(self) -> None:
        st = os.stat(self.passwd_file)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._accounts = read_passwd(self.passwd_file)
            self._stamp = stamp

    def _current(self) -> dict[str, Account]:
        now = self._clock()
        if now - self._checked_at >= RECHECK_SECONDS:
            self._checked_at = now
            try:
                self.reload()
            except (OSError, PasswdFileError):
                pass  # keep serving the accounts we have; the log of the edit says why
        return self._accounts

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def account(self, address: str) -> Account | None:
        return self._current().get(address.lower())

    def accounts(self) -> list[Account]:
        return sorted(self._current().values(), key=lambda a: a.address)

    def resolve(self, address: str) -> list[str] | None:
        """The mailboxes (account addresses) a local address delivers to, or None.

        Aliases are followed (at most MAX_ALIAS_DEPTH deep); ``user+tag@domain`` falls
        back to ``user@domain`` (RFC 5233).
        """
        return self._resolve(address, 0)

    def _resolve(self, address: str, depth: int) -> list[str] | None:
        if depth > MAX_ALIAS_DEPTH:
            return None
        try:
            local, domain = split_address(address)
        except BadName:
            return None
        key = f"{local}@{domain}".lower()
        account = self.account(key)
        if account is not None:
            return [account.address]
        if key in self.aliases:
            found: list[str] = []
            for target in self.aliases[key]:
                resolved = self._resolve(target, depth + 1) if self._is_local(target) else None
                for mailbox in resolved or ():
                    if mailbox not in found:
                        found.append(mailbox)
            return found or None
        if self.separator and self.separator in local:
            base = local.split(self.separator, 1)[0]
            if base:
                return self._resolve(f"{base}@{domain}", depth + 1)
        return None

    def _is_local(self, address: str) -> bool:
        try:
            return self.is_local_domain(split_address(address)[1])
        except BadName:
            return False

    def check_password(self, address: str, password: str) -> defer.Deferred[str | None]:
        """The account's canonical address if the password is right, else None."""
        try:
            account = self.account(normalize_address(address))
        except BadName:
            account = None
        stored = account.password_hash if account else "{BLF-CRYPT}" + _DUMMY_HASH
        d = threads.deferToThread(verify_password, password, stored)
        d.addCallback(lambda ok: account.address if ok and account else None)
        return d


class IMailUser(Interface):
    """The avatar of a logged-in user: their canonical address."""


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    address: str


@implementer(ICredentialsChecker)
class PasswdChecker:
    """twisted.cred checker over the passwd-file (the hash check runs in a thread)."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[str]:
        username = creds.username
        password = creds.password
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        d = self.directory.check_password(username, password)

        def decide(address: str | None) -> str:
            if address is None:
                raise error.UnauthorizedLogin()
            return address

        d.addCallback(decide)
        return d


@implementer(IRealm)
class MailRealm:
    def requestAvatar(self, avatarId, mind, *interfaces):  # type: ignore[no-untyped-def]
        if IMailUser not in interfaces:
            raise NotImplementedError("only IMailUser avatars")
        address = avatarId.decode() if isinstance(avatarId, bytes) else avatarId
        return IMailUser, MailUser(address), lambda: None
