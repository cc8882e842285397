"""How the command-line tools report what they were given wrong: one `error: ...` line, no traceback.

The library files (model.py, safetensors_io.py, gguf.py, tokenizer.py, commonsense.py, adapters.py, and
the adapter files lora.py, hira.py, pera.py, dora.py, loran.py, which import only torch and math) raise ValueError or OSError with a message that names the culprit.
A tool turns those into the one line only where it reads the user's input (its arguments, files and
folders), by running that code under `user_input()`; anywhere else an exception is a bug and keeps its
traceback. A write that the disk refuses (full, read-only, not permitted) is one line too, naming the path
and the system's reason, under `disk_errors()`. Each tool's entry point is `run(main)`, which makes SIGTERM
what Ctrl-C is, and ends one that nothing else handles with one line.

A number, a device or a text on the command line is checked where argparse parses it, by the `type` helpers
below: each says what it expects (the range, finite), so that a setting that would train wrongly, or fail
deep inside, is refused before anything runs. A value read from a file is checked with the same ranges
(`Number.ok`), by the code that reads the file, which names it.

Exit status: 2 for a wrong command line (argparse), 1 for a bad input, 130 for Ctrl-C or SIGTERM.
A machine that cannot build the code of --compile is a bad input too: `compile_errors()` says so in one line.
"""
import argparse
import contextlib
import errno
import math
import signal
import subprocess
import sys

import torch

# what a disk answers a write it refuses: full, over quota, read-only, not permitted, a file too large
REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextlib.contextmanager
def user_input(culprit=None):
    """Inside this block a ValueError or OSError (or a JSON file's RecursionError) means bad input: exit with
    `error: [culprit: ]message`."""
    try:
        yield
    except (ValueError, OSError) as e:
        message = " ".join((str(e) or type(e).__name__).split())  # one line, even for a multi-line message
        sys.exit(f"error: {f'{culprit}: ' if culprit else ''}{message}")
    except RecursionError:  # JSON nested deeper than the parser goes: json.loads raises this, not a ValueError
        sys.exit(f"error: {f'{culprit}: ' if culprit else ''}not valid JSON (nested too deeply)")


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


@contextlib.contextmanager
def compile_errors(then="run without --compile"):
    """Inside this block a torch.compile that cannot build code on this machine (no working C++ compiler for
    inductor on a CPU, no C compiler for Triton on a GPU) exits with one line that says so, and `then`.
    Any other compile error is a bug, of torch or of ours: it keeps its traceback, with `then` as a note."""
    try:
        yield
    except Exception as e:
        if not compile_failure(e):
            raise
        if compiler_signal(e):  # the terminal's Ctrl-C reaches the compiler too: an interrupt, not a failure
            raise KeyboardInterrupt from None
        import torch._inductor.exc
        cause = e.inner_exception
        if isinstance(cause, (torch._inductor.exc.InvalidCxxCompiler, torch._inductor.exc.CppCompileError)) or \
                "C compiler" in str(cause):  # Triton: "Failed to find C compiler. Please specify via CC ..."
            reason = " ".join(str(cause).split("\n")[0].split())
            sys.exit(f"error: --compile: torch.compile cannot build code on this machine ({reason}; it needs a C++ "
                     f"compiler on a CPU, g++ or the one CXX names, and a C compiler on a GPU); {then}")
        e.add_note(f"--compile: torch.compile failed; {then}")
        raise


def compile_failure(e):
    """Whether e is torch.compile's failure to compile (its backend's error, inside)."""
    dynamo = sys.modules.get("torch._dynamo.exc")  # imported by torch.compile: without it, nothing compiled
    return dynamo is not None and isinstance(e, dynamo.BackendCompilerFailed)


def compiler_signal(e):
    """The name of the signal that stopped the compiler process, when that is why a compile failed; else None."""
    ran = compile_failure(e) and e.inner_exception.__cause__  # the compiler's run, behind inductor's error
    if isinstance(ran, subprocess.CalledProcessError) and ran.returncode < 0:
        return signal.Signals(-ran.returncode).name
    return None


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default shown once: argparse's `(default: X)`, except where the help text
    states its own `(default ...)` and for flags and options whose default is None (nothing to show). The
    description keeps its line breaks. tests/test_readme.py checks every tool's --help."""

    def _get_help_string(self, action):
        if "(default" in action.help or action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


# -----------------------------------------------------------------------------
# argparse types: each parses a flag's text or refuses it with what it expects

class Number:
    """Finite numbers of one kind (int or float) in a range: an argparse `type` for a flag's text, and
    `ok(value)` for a value read from a JSON file (a number of that kind, not a bool). str() is the range."""

    def __init__(self, kind=float, low=None, high=None, low_open=False, high_open=False, zero=True):
        self.kind, self.low, self.high, self.zero = kind, low, high, zero
        self.low_open, self.high_open = low_open, high_open

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            return False
        try:
            finite = self.kind is int or math.isfinite(value)
        except OverflowError:  # an integer beyond any float, for a float
            return False
        return (finite and (self.zero or value != 0)
                and (self.low is None or value > self.low or (value == self.low and not self.low_open))
                and (self.high is None or value < self.high or (value == self.high and not self.high_open)))

    def __call__(self, text):
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"expected {self}, got {text!r}")
        return value

    def __str__(self):
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low}"
        return what + ("" if self.zero else " other than 0")


POSITIVE_INT = Number(int, low=1)
COUNT = Number(int, low=0)
POSITIVE = Number(float, low=0, low_open=True)
NON_NEGATIVE = Number(float, low=0)
FINITE = Number(float)
NONZERO = Number(float, zero=False)
DROPOUT = Number(float, low=0, high=1, high_open=True)
SEED = Number(int, low=-2 ** 63, high=2 ** 64 - 1)  # what torch.manual_seed and torch.Generator accept


def device(text):
    """--device: cpu, cuda, cuda:N or mps, and one that this machine and this build of torch have."""
    try:
        kind = torch.device(text)
    except (RuntimeError, ValueError):
        kind = None
    if kind is None or kind.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    if kind.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this torch ({torch.__version__}) sees no CUDA device"
                                         + (", it was built without CUDA" if torch.version.cuda is None else ""))
    if kind.type == "cuda" and (kind.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine or this torch has no MPS device")
    return text


def utf8(text):
    """A text argument: a command line that is not UTF-8 reaches Python as lone surrogates (PEP 383), which
    no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = text.encode("utf-8", "surrogateescape" if "\udc80" <= e.object[e.start] <= "\udcff" else "backslashreplace")
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {raw!r} (set the terminal to UTF-8)") from None
    return text
