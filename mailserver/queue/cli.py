"""``mailserver queue list|show ID|flush|delete ID|retry ID``.

The CLI and a running server share the spool. Reading (list, show) is always safe: state
files are replaced by rename, never rewritten in place. Changes go through the spool's
lock: when no server holds it, the CLI takes it and acts on the files itself; when a
server runs, the CLI leaves a request in ctl/ and wakes the server (SIGUSR2 to the pid
in the lock file), which carries it out at once; if the signal cannot be sent, at its
next scan ([queue] scan_interval) at the latest.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from mailserver.config import load
from mailserver.queue.service import spool_dir
from mailserver.queue.spool import ID_RE, PENDING, Spool, SpoolBusy


def add_parser(commands: argparse._SubParsersAction, default_config: str) -> None:
    queue = commands.add_parser("queue", help="inspect and manage the outbound queue")
    sub = queue.add_subparsers(dest="queue_command", required=True)
    for name, text, needs_id in (
        ("list", "list the queued messages", False),
        ("show", "show one message's envelope and state", True),
        ("flush", "try every queued message now", False),
        ("retry", "try one message now", True),
        ("delete", "delete one message without a report", True),
    ):
        command = sub.add_parser(name, help=text)
        if needs_id:
            command.add_argument("id")
        command.add_argument("--config", default=default_config)


def run(args: argparse.Namespace) -> int:
    config = load(args.config)
    spool = Spool(spool_dir(config))
    command = args.queue_command
    if getattr(args, "id", None) is not None and not ID_RE.match(args.id):
        print(f"mailserver: bad queue id {args.id!r}", file=sys.stderr)
        return 1
    if command == "list":
        return _list(spool)
    if command == "show":
        return _show(spool, args.id)
    queue_id = getattr(args, "id", "")
    if queue_id and queue_id not in spool.ids():
        print(f"mailserver: no queued message {queue_id}", file=sys.stderr)
        return 1
    try:
        spool.lock()
    except SpoolBusy:
        spool.request(command, queue_id)
        if spool.wake():
            print(f"{command} {queue_id or 'all'}: handed to the running server")
        else:
            print(
                f"{command} {queue_id or 'all'}: requested; the running server cannot be "
                "signalled and acts on it at its next scan ([queue] scan_interval)"
            )
        return 0
    try:
        _act(spool, command, queue_id)
    finally:
        spool.unlock()
    return 0


def _act(spool: Spool, command: str, queue_id: str) -> None:
    """No server runs: change the files directly (it will read them when it starts)."""
    if command == "delete":
        spool.remove(queue_id)
        print(f"{queue_id}: deleted")
        return
    now = time.time()
    for target in [queue_id] if queue_id else spool.ids():
        entry = spool.load(target)
        entry.next_attempt = now
        spool.save(entry)
    print(f"{queue_id or 'all'}: due now; delivered when the server runs")


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _list(spool: Spool) -> int:
    ids = spool.ids()
    for queue_id in ids:
        try:
            entry = spool.load(queue_id)
        except (OSError, ValueError):
            continue  # removed while we listed
        pending = [r.address for r in entry.pending()]
        print(
            f"{entry.id}  {entry.size:>9}  {_when(entry.created)}  <{entry.mail_from}>  "
            f"{len(pending)} pending, next {_when(entry.next_attempt)}"
        )
        for address in pending:
            print(f"    {address}")
    print(f"{len(ids)} queued")
    return 0


def _show(spool: Spool, queue_id: str) -> int:
    try:
        entry = spool.load(queue_id)
    except FileNotFoundError:
        print(f"mailserver: no queued message {queue_id}", file=sys.stderr)
        return 1
    print(f"id:           {entry.id}")
    print(f"from:         <{entry.mail_from}>")
    print(f"size:         {entry.size}")
    print(f"arrived:      {_when(entry.created)}")
    print(f"attempts:     {entry.attempts}")
    if entry.pending():
        print(f"next attempt: {_when(entry.next_attempt)}")
    if entry.ret or entry.envid:
        print(f"dsn:          RET={entry.ret or '-'} ENVID={entry.envid or '-'}")
    for rcpt in entry.recipients:
        line = f"  <{rcpt.address}> {rcpt.status}"
        if rcpt.status != PENDING or rcpt.diagnostic:
            line += f" ({rcpt.remote or '-'}: {rcpt.diagnostic or '-'})"
        print(line)
    return 0
