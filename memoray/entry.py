"""The `memoray` command's entry point. `memoray hook <Event>` runs on every agent event, and
Claude Code waits on it, so it goes straight to the hook runner without importing argparse or
the rest of the CLI (about 10 ms of a hook's ~60 ms of local work); everything else is
memoray.cli's."""

from __future__ import annotations

import os
import sys
import time

STARTED = time.time()  # the first line of ours a hook runs (its trace's "entry" mark)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "hook":
        from memoray.hooks import HOOK_EVENTS

        if argv[1] in HOOK_EVENTS:
            from memoray.hooks.runner import run_hook

            code = int(run_hook(argv[1], STARTED) or 0)
            # The hook has answered and left nothing to run at exit (the spool is fsynced, a
            # detached sender is its own process): skip the interpreter's teardown, about
            # 10 ms of every hook on a machine where a hook takes ~150 ms.
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    from memoray.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
