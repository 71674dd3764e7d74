"""`python -m fashionlab` and the `fashionlab` command.

Ctrl-C or SIGTERM while nothing is being written ends the process at once, quietly: Python's own
KeyboardInterrupt, raised wherever the interpreter happens to be, can land inside a library's
callback and be printed there. Commands that write (train, compare, sweep, evaluate, download) turn
the signals into a stop request at safe points while they write (interrupts.stop_requests).
Once the command is done, a signal while the process exits changes nothing.
"""

import os
import signal


def _exit_now(signum, frame) -> None:
    os.write(2, b"fashionlab: interrupted\n")
    os._exit(128 + signum)


def main() -> int:
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _exit_now)
    from fashionlab.cli import main as cli_main

    code = cli_main()
    for stop in (signal.SIGINT, signal.SIGTERM):  # the work is over: exit with its code, whatever comes
        signal.signal(stop, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
