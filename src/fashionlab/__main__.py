"""`python -m fashionlab` and the `fashionlab` command.

Ctrl-C or SIGTERM while nothing is being written ends the process at once, quietly: Python's own
KeyboardInterrupt, raised wherever the interpreter happens to be, can land inside a library's
callback and be printed there. Commands that write (train, compare, sweep, evaluate, download) turn
the signals into a stop request at safe points while they write (interrupts.stop_requests).
Once the command is done, a signal while the process exits changes nothing.
"""

import atexit
import os
import signal
import sys


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


def run() -> None:
    """The `fashionlab` command: main(), then a quick exit. Exit handlers run and output is
    flushed as usual, but the interpreter does not tear down every module and XLA's runtime
    one by one, which takes ~0.5 s after a command that used a model."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    run()
