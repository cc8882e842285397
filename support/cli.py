"""How the command-line tools report what they were given wrong: one `error: ...` line, no traceback.

The library files (model.py, safetensors_io.py, gguf.py, tokenizer.py, commonsense.py, adapters.py, and
the adapter files lora.py, hira.py, pera.py, dora.py, loran.py, which import only torch and math) raise ValueError or OSError with a message that names the culprit.
A tool turns those into the one line only where it reads the user's input (its arguments, files and
folders), by running that code under `user_input()`; anywhere else an exception is a bug and keeps its
traceback. A write that the disk refuses (full, read-only, not permitted) is one line too, naming the path
and the system's reason, under `disk_errors()`. Each tool's entry point is `run(main)`, which makes SIGTERM
what Ctrl-C is, and ends one that nothing else handles with one line.

Exit status: 2 for a wrong command line (argparse), 1 for a bad input, 130 for Ctrl-C or SIGTERM.
"""
import contextlib
import errno
import signal
import sys

# what a disk answers a write it refuses: full, over quota, read-only, not permitted, a file too large
REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextlib.contextmanager
def user_input(culprit=None):
    """Inside this block a ValueError or OSError means bad input: exit with `error: [culprit: ]message`."""
    try:
        yield
    except (ValueError, OSError) as e:
        message = " ".join((str(e) or type(e).__name__).split())  # one line, even for a multi-line message
        sys.exit(f"error: {f'{culprit}: ' if culprit else ''}{message}")


def disk_refusal(e):
    """The OSError of a write the disk refused, behind e (torch.save's RuntimeError holds it as its context); else None."""
    cause = e.__context__ if isinstance(e, RuntimeError) else e
    return cause if isinstance(cause, OSError) and cause.errno in REFUSED else None


@contextlib.contextmanager
def disk_errors(folder, kept=None):
    """Inside this block a write the disk refuses exits with `error: <path>: <reason>[; kept()]`; a write's own
    error names no file, and then folder is named. Any other error keeps its traceback."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        refused = disk_refusal(e)
        if refused is None:
            raise
        sys.exit(f"error: {refused.filename or folder}: {refused.strerror}" + (f"; {kept()}" if kept else ""))


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run(main, argv=None):
    """A tool's entry point: main(argv), with Ctrl-C outside the places that handle it as one line.

    Without argv (the real command line, `if __name__ == "__main__"`) SIGTERM, what `timeout` and job
    schedulers send first, is a Ctrl-C too (unless ignored); the process ends when main does, and from
    then on both are ignored: they could only interrupt the interpreter's exit, with a traceback.
    """
    if argv is None and signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
