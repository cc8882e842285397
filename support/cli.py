"""How the command-line tools report what they were given wrong: one `error: ...` line, no traceback.

The library files (model.py, safetensors_io.py, gguf.py, tokenizer.py, commonsense.py, adapters.py, and
the adapter files lora.py, hira.py, pera.py, dora.py, loran.py, which import only torch and math) raise ValueError or OSError with a message that names the culprit.
A tool turns those into the one line only where it reads the user's input (its arguments, files and
folders), by running that code under `user_input()`; anywhere else an exception is a bug and keeps its
traceback. Each tool's entry point is `run(main)`, which also ends a Ctrl-C that nothing else handles
with one line.

Exit status: 2 for a wrong command line (argparse), 1 for a bad input, 130 for Ctrl-C.
A machine that cannot build the code of --compile is a bad input too: `compile_errors()` says so in one line.
"""
import contextlib
import signal
import sys


@contextlib.contextmanager
def user_input(culprit=None):
    """Inside this block a ValueError or OSError means bad input: exit with `error: [culprit: ]message`."""
    try:
        yield
    except (ValueError, OSError) as e:
        message = " ".join((str(e) or type(e).__name__).split())  # one line, even for a multi-line message
        sys.exit(f"error: {f'{culprit}: ' if culprit else ''}{message}")


@contextlib.contextmanager
def compile_errors(then="run without --compile"):
    """Inside this block a torch.compile that cannot build code on this machine (no working C++ compiler for
    inductor on a CPU, no C compiler for Triton on a GPU) exits with one line that says so, and `then`.
    Any other compile error is a bug, of torch or of ours: it keeps its traceback, with `then` as a note."""
    try:
        yield
    except Exception as e:
        import torch._dynamo.exc
        import torch._inductor.exc
        if not isinstance(e, torch._dynamo.exc.BackendCompilerFailed):
            raise
        cause = e.inner_exception
        if isinstance(cause, (torch._inductor.exc.InvalidCxxCompiler, torch._inductor.exc.CppCompileError)) or \
                "C compiler" in str(cause):  # Triton: "Failed to find C compiler. Please specify via CC ..."
            reason = " ".join(str(cause).split("\n")[0].split())
            sys.exit(f"error: --compile: torch.compile cannot build code on this machine ({reason}; it needs a C++ "
                     f"compiler on a CPU, g++ or the one CXX names, and a C compiler on a GPU); {then}")
        e.add_note(f"--compile: torch.compile failed; {then}")
        raise


def run(main, argv=None):
    """A tool's entry point: main(argv), with Ctrl-C outside the places that handle it as one line.

    Without argv (the real command line, `if __name__ == "__main__"`) the process ends when main does,
    and from then on Ctrl-C is ignored: it could only interrupt the interpreter's exit, with a traceback.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
