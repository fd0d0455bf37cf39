"""Runs the outbound queue alone in a process (for kill -9 tests).

    queue_runner.py CONFIG [--enqueue N RCPT...]

With --enqueue, N messages from alice@example.test to the recipients are spooled first
("Subject: message <i>"), and "queued <id>" is printed for each once it is durable.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.internet import defer, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from mailserver.config import load
from mailserver.queue.service import QueueService


def local_deliver(*args: object) -> defer.Deferred[None]:
    return defer.fail(LookupError("no local delivery in the queue runner"))


async def main(service: QueueService, argv: list[str]) -> None:
    await service.started
    if argv and argv[0] == "--enqueue":
        count, rcpts = int(argv[1]), argv[2:]
        for i in range(count):
            body = f"Subject: message {i}\r\n\r\nbody {i}\r\n".encode()
            queue_id = await service.enqueue("alice@example.test", rcpts, [body])
            print(f"queued {queue_id}", flush=True)


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = QueueService(load(sys.argv[1]), local_deliver, reactor)
    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(main(service, sys.argv[2:])))
    reactor.run()
