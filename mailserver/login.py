"""Password logins for every protocol, through twisted.cred."""

from __future__ import annotations

from twisted.cred import error
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer

from mailserver.accounts import Directory, IMailUser, MailRealm, PasswdChecker


class LoginService:
    """Answers 'is this user name and password right?' with the canonical address."""

    def __init__(self, directory: Directory) -> None:
        self.portal = Portal(MailRealm(), [PasswdChecker(directory)])

    def login(self, username: str, password: str, role: str, peer: str) -> defer.Deferred:
        """Fires with the user's canonical address, or None when the login failed.

        ``role`` and ``peer`` are for the throttling of failed logins per client.
        """
        d = self.portal.login(UsernamePassword(username, password), None, IMailUser)

        def succeeded(result):  # type: ignore[no-untyped-def]
            _, avatar, _ = result
            return avatar.address

        def failed(failure):  # type: ignore[no-untyped-def]
            failure.trap(error.UnauthorizedLogin)
            return None

        d.addCallbacks(succeeded, failed)
        return d
