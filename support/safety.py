"""What makes a run safe to stop, kill, resume and share a machine with. The loop holds one object, `Guard`,
around it and calls it twice a step; main() takes the folder's lock and checks the run folder, each in a line.

One writer per folder. `folder_lock` holds out/.lock with fcntl.flock for the whole run: a second train.py
    (or eval.py, merge.py) on the same folder is refused with one line. The kernel grants the lock to one
    holder at a time and releases it when the holder's process ends, even by kill -9: no lock is ever stale,
    and no pid is guessed. Once it is ours no one else writes there, so temporary files left there are a
    killed run's: they are removed.
A step is one unit. Inside `StopSignals`, Ctrl-C (SIGINT) and SIGTERM (what `timeout`, SLURM, Kubernetes
    and torchrun send first) are noted, and the run stops at `check()`, after the step's state is saved; a
    state therefore always holds a whole step: update, validation, best adapter, log line. A second signal
    does not wait: the step is abandoned, the state before it stands. Several processes stop at one step.
Resume is the uninterrupted run, byte for byte. The state file (`save_state`, written atomically) holds
    the adapter, AdamW's moments, the step, the best so far, the log and the RNG states of every process
    (`rng_state`, `gather_rng`), so a resumed run draws the same dropout masks (the batches are a pure
    function of seed and epoch). A kill at any moment leaves a state to resume from: one is written before
    the first step.
Resume continues the same run only. `check_run_folder` compares the arguments that define a run
    (RUN_DEFINING) with the folder's args.json and names any that differ; without --resume a folder that
    already holds a run is refused rather than overwritten.
A NaN or a full disk stops cleanly. A non-finite loss or gradient norm stops the run before its update, and
    a write the disk refuses stops it where it is, each with one line (`exit_not_finite`, `exit_write_refused`)
    naming the state and the best adapter kept; nothing of the bad step is saved. The state kept after a
    non-finite step is the last whose next step was finite: a state saved just before it (finite numbers whose
    forward pass overflows, after --lr 1e30) gives way to the one saved before, kept until then as state.pt.prev.
What a run reads is fingerprinted. `fingerprint` (checkpoint/fingerprint.json, written at the start) holds
    digests of the training data and the model's files; --resume refuses other contents under the same paths.
Several processes. `setup_distributed` joins the torchrun job (nccl on GPUs, gloo on CPUs); only the first
    process takes the lock and writes files.
"""
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from support import adapters, cli, commonsense
from support.safetensors_io import check_tensors

STATE_FILE = Path("checkpoint") / "state.pt"  # inside --out
FINGERPRINT = Path("checkpoint") / "fingerprint.json"  # the digests of the files a run reads (fingerprint)
TEMPORARY = re.compile(r"\..+\.tmp\d+|state\.pt\.tmp|state\.pt\.prev")  # what write_json, save_safetensors,
# save_state write first, and Guard's fallback state
# Arguments that define a run: --resume refuses to continue a run with different ones.
# Every method's settings (its class's keyword arguments: alpha, dropout, terms, ...) are among them.
SETTINGS = {name: default for method in adapters.METHODS for name, default in adapters.options(method).items()}
RUN_DEFINING = ("model", "data", "tasks", "method", "rank", *SETTINGS, "targets", "lr",
                "batch_size", "epochs", "max_steps", "eval_every", "warmup_steps", "val_size", "seed", "train_on_inputs",
                "cutoff", "weight_decay", "grad_clip", "train_file", "precision")
# what a run saved before a setting existed used: its default (PERA's init and h_lr_ratio, LoRAN's amplitude, omega)
RUN_DEFAULTS = {name: default for name, default in SETTINGS.items() if default is not adapters.REQUIRED}


# -----------------------------------------------------------------------------
# One writer per folder

@contextmanager
def folder_lock(folder, tool="train.py", shown=None):
    """Hold folder/.lock while `tool` writes into folder; a second process on the same folder is refused with
    one line naming `shown` (default: folder), and the holder's tool, pid and host, which the file holds only
    for that message.

    The lock is fcntl.flock on the open file, held for the run's life: the kernel grants it atomically to one
    open file at a time and releases it when that file closes, which a kill -9 does too, so no lock is stale
    and none is guessed from a pid (a dead one, or one now reused). flock rather than fcntl's record locks:
    those belong to the process, so a second open of the same file in the same process would pass, and
    closing any descriptor of the file would drop them. On release the file is removed while still locked;
    a process that locked it in between finds that the path no longer names the file it holds, and retries.
    Once the lock is ours no one else writes in folder, so temporary files there (and in folder/checkpoint)
    are a killed run's: they are removed.
    """
    lock = folder / ".lock"
    if int(os.environ.get("RANK", "0")) > 0:  # a torchrun job's other processes: the first one holds the lock
        yield
        return
    with cli.user_input(), cli.disk_errors(folder):
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                sys.exit(f"error: {shown or folder} is in use by {holder(lock)}; wait for it to end or choose "
                         f"another --out")
            if same_file(fd, lock):
                break
            os.close(fd)  # its holder removed it between our open and our lock: take the one there now
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"tool": tool, "pid": os.getpid(), "host": socket.gethostname()}).encode())
            for place in (folder, folder / "checkpoint"):
                for leftover in place.iterdir() if place.is_dir() else []:
                    if TEMPORARY.fullmatch(leftover.name):
                        leftover.unlink()
        except BaseException:
            os.close(fd)
            raise
    try:
        yield
    finally:
        if same_file(fd, lock):
            lock.unlink()
        os.close(fd)


def check_writable(folder):
    """Create folder and a file in it, removed at once: a folder that cannot be written fails now (OSError),
    not after the work."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test.tmp{os.getpid()}"  # a TEMPORARY name: a kill leaves nothing that stays
    try:
        probe.touch()
    except OSError as e:  # said of the folder, not of the probe's name
        raise OSError(e.errno, e.strerror, str(folder)) from None
    probe.unlink()


def same_file(fd, path):
    """Whether path still names the file open as fd."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def holder(lock):
    """Who holds a lock, as its file says: its tool, pid and host."""
    for _ in range(50):
        try:
            info = json.loads(lock.read_text())
            return f"another {info['tool']} (pid {info['pid']} on host {info['host']})"
        except (OSError, ValueError, KeyError, TypeError):  # it has just taken the lock: its name comes at once
            time.sleep(0.01)
    return "another process"


# -----------------------------------------------------------------------------
# A step is one unit: a signal waits for its end

class StopSignals:
    """Between hold() and release() SIGINT (Ctrl-C) and SIGTERM are noted; check(), at the end of each step,
    after its state is saved, stops the run then (KeyboardInterrupt).

    A step is one unit: its update, validation, best adapter, log line and state. A signal inside it would
    save a state that has the step's update but not its record (or its adapter); held to the step's end, it
    saves a state that a resumed run continues exactly. A second signal does not wait: the step is
    abandoned (`abandoned`), and the state saved before it is the one to resume from. With several
    processes check() asks them all (one all_reduce of a flag), so that every process stops after the same
    step (`agreed`), however the signals reached them: torchrun passes its SIGTERM on to every process.
    """

    def __init__(self, world=1, device="cpu"):
        self.world, self.device, self.previous = world, device, {}
        self.pending, self.abandoned, self.agreed = None, False, False  # the first signal's name; a second; all stop

    def hold(self):
        # only the main thread can set a handler; a signal ignored (nohup, a background job) stays ignored
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._note)

    def release(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _note(self, signum, frame):
        if self.pending:
            self.abandoned = True
            raise KeyboardInterrupt
        self.pending = signal.Signals(signum).name
        tqdm.write(f"{self.pending}: finishing this step, then saving (a second signal: stop now, without it)")

    def check(self):
        stop = self.pending is not None
        if self.world > 1:  # any process's signal stops them all, here
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag)
            stop = self.agreed = flag.item() > 0
        if stop:
            raise KeyboardInterrupt


class Guard:
    """The safety of a loop, beside it: `with Guard(run) as guard:` around the loop, and two calls a step.

    Inside, Ctrl-C and SIGTERM wait for the step's end (StopSignals). `before_update(loss, grad_norm)` stops the
    run on a non-finite loss or gradient norm, before the update; `step_done(save=...)` at the step's end saves
    the state when asked, then stops the run if a signal came. A stop ends the run with one line naming what is
    kept: a signal (the state of the step it ends saved), a second signal or a compiler killed by the terminal's
    Ctrl-C (the step abandoned), a non-finite step (the last state whose next loss and gradient were finite: the
    one saved before it, kept as state.pt.prev until the next step shows it finite), a write the disk refuses.
    eval.py's batches use it too, without a run: `Guard(world=, device=, stopped=)`, where stopped(abandoned)
    ends an interrupted evaluation.
    """

    def __init__(self, run=None, *, world=1, device="cpu", stopped=None):
        self.run, self.stopped = run, stopped
        self.stops = StopSignals(run.world if run else world, run.device if run else device)
        self.start, self.tokens, self.updated = time.time(), 0, False  # updated: this step's update is done
        if run:
            # steps updated; the step of the state in state.pt (and of the one before it); the last state whose
            # next step was finite (a loaded one counts as such: there is none before it to go back to)
            self.step = self.saved = self.prev_step = self.verified = run.step
            self.best, self.history, self.rng = run.best, run.history, rng_state()
            self.prev = run.state_file.with_name(run.state_file.name + ".prev")

    def __enter__(self):
        self.stops.hold()  # from here Ctrl-C and SIGTERM wait for the end of the step they come in
        return self

    def before_update(self, loss, grad_norm):
        for what, value in (("loss", loss), ("gradient norm", grad_norm)):
            if not math.isfinite(value):
                raise FloatingPointError(f"{what} is {value} at step {self.step + 1}")
        self.verified = self.step  # the state after self.step gave a finite step: its fallback can go
        if self.run.rank == 0:
            self.prev.unlink(missing_ok=True)
        # the update draws nothing: the RNG now is the RNG after it, saved so a resumed run draws the same masks
        self.step, self.rng, self.updated = self.step + 1, rng_state(), True

    def step_done(self, save=False):
        if save:
            self.save()
        self.stops.check()  # a signal held during the step stops the run here, after its state
        self.updated = False

    def save(self):
        run, rng_ranks = self.run, gather_rng(self.run.world)
        if run.rank == 0:
            if run.state_file.is_file():  # the state saved last stays until this one's next step is finite
                keep_copy(run.state_file, self.prev)
            save_state(run.state_file, self.step, run.model, run.optimizer, self.rng, self.best, self.history,
                       self.clock(), rng_ranks)
        self.prev_step, self.saved = self.saved, self.step

    def clock(self):
        """{"seconds", "tokens"} of training so far, all sessions together."""
        return {"seconds": self.run.clock["seconds"] + time.time() - self.start,
                "tokens": self.run.clock["tokens"] + self.tokens}

    def times(self):
        """(clock, seconds of this session); a finished run resumed: the clock stopped with its state."""
        return self.clock() if self.step > self.run.step else self.run.clock, time.time() - self.start

    def __exit__(self, kind, error, traceback):
        self.stops.release()
        stopped = kind is not None and issubclass(kind, KeyboardInterrupt)
        if self.run is None:
            return stopped and self.stopped(self.stops.abandoned)
        run, inside = self.run, self.step if self.updated else self.step + 1  # the step in progress
        if kind is not None and issubclass(kind, FloatingPointError):
            if self.saved > self.verified:  # the state saved last gave this step: back to the one before it
                if run.rank == 0:
                    os.replace(self.prev, run.state_file)
                self.saved = self.prev_step
            exit_not_finite(error, self.saved, run.state_file, self.best, run.out)
        # one process, or all of them stopping at this step together: save it (unless just saved)
        if stopped and not self.stops.abandoned and (run.world == 1 or self.stops.agreed) and self.saved != self.step:
            self.save()
        if run.rank == 0:
            self.prev.unlink(missing_ok=True)
        if stopped:  # inside: the abandoned step, or (stopped by check(), at a step's end) the step just finished
            exit_interrupted(inside, self.saved, run.state_file, self.stops.abandoned)
        if kind is not None and issubclass(kind, (OSError, RuntimeError)):  # a full or read-only disk is one line
            if signum := cli.compiler_signal(error):  # the terminal's Ctrl-C reached the compiler: the step cannot end
                exit_interrupted(inside, self.saved, run.state_file, True,
                                 why=f"interrupted while compiling (the compiler got {signum})")
            if cli.disk_refusal(error):
                exit_write_refused(cli.disk_refusal(error), self.saved, run.state_file, self.best, run.out)
        return False  # anything else: a bug, with its traceback


def keep_copy(path, copy):
    """copy: the file at path as it is now, whatever is written to path next (a second link, else a copy)."""
    copy.unlink(missing_ok=True)
    try:
        os.link(path, copy)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, copy)


def exit_interrupted(step, saved_step, state_file, abandoned, why="interrupted twice"):
    """The line a stop by Ctrl-C or SIGTERM ends the run with: which state is kept, and how to continue."""
    if abandoned:
        sys.exit(f"\n{why}: stopped inside step {step}, without saving it; the state after step "
                 f"{saved_step} in {state_file} is kept. Continue with the same arguments plus --resume.")
    if saved_step != step:  # several processes stopped one by one: the others' RNG states cannot be gathered
        sys.exit(f"\ninterrupted after step {step}; the state saved last in {state_file} (step {saved_step}) "
                 f"is kept. Continue with the same arguments plus --resume.")
    sys.exit(f"\ninterrupted after step {step}; state saved in {state_file}. Continue with the same "
             f"arguments plus --resume.")


def kept(saved_step, state_file, best, out):
    adapter = (f"the best adapter so far (step {best['step']}) in {out}" if best["step"] is not None else
               "no adapter (none was saved yet)")
    return f"Kept: the state after step {saved_step} in {state_file}, and {adapter}"


def exit_not_finite(error, saved_step, state_file, best, out):
    """The line a NaN or infinite loss (or gradient norm) ends the run with: what was kept, what to try."""
    sys.exit(f"error: {error}: stopped without saving this step. {kept(saved_step, state_file, best, out)}. Try a "
             f"lower --lr or a smaller --rank, in another --out (a resumed run would repeat the same steps).")


def exit_write_refused(refused, saved_step, state_file, best, out):
    """The line a full or read-only disk ends the run with (refused: the OSError, from cli.disk_refusal)."""
    sys.exit(f"error: {refused.filename or out}: {refused.strerror}: stopped without saving this step. "
             f"{kept(saved_step, state_file, best, out)}. Make room (or make it writable), then continue with "
             f"the same arguments plus --resume.")


# -----------------------------------------------------------------------------
# Resumable state: everything the next step depends on, written atomically

def save_state(path, step, model, optimizer, rng, best, history, clock, rng_ranks=None):
    """clock: {"seconds", "tokens"} of training so far, all sessions together (for metrics.json)."""
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = {"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(), "rng": rng,
             "best": best, "history": history, "clock": clock}
    if rng_ranks is not None:  # a run of several processes: each one's RNG state, in rank order
        state["rng_ranks"] = rng_ranks
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a file, not a path: a full disk is then an OSError (cli.disk_refusal)
            torch.save(state, f)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path, model):
    """The saved state, checked against the model; a file that train.py did not write is an error naming it.
    It is read as data only (weights_only: tensors, numbers, text, lists, dicts): a pickle that would run code
    is refused, not run."""
    try:
        # on the CPU: torch.set_rng_state takes CPU tensors only; the adapter's and AdamW's are copied to the device
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle of something else: whatever torch.load makes of it
        # weights_only's refusal is paragraphs of advice around the line that says what it met
        met = [line.split(". ")[0].strip(" .") for line in str(e).splitlines() if re.search("unsupported", line, re.I)]
        raise ValueError(f"{path}: not a readable train.py state ({met[0] if met else f'{type(e).__name__}: {e}'}); "
                         f"delete the folder and start again, or choose another --out") from None
    keys = {"step", "trainable", "optimizer", "rng", "best", "history"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise ValueError(f"{path}: not a train.py state (expected the keys {', '.join(sorted(keys))})")
    checks = {"step": isinstance(state["step"], int) and state["step"] >= 0,
              "trainable": isinstance(state["trainable"], dict)
              and all(isinstance(t, torch.Tensor) for t in state["trainable"].values()),
              "optimizer": isinstance(state["optimizer"], dict) and {"state", "param_groups"} <= set(state["optimizer"]),
              "rng": all(map(valid_rng, [state["rng"], *(state.get("rng_ranks") or [])])),
              "best": isinstance(state["best"], dict) and {"val_loss", "step"} <= set(state["best"]),
              "history": isinstance(state["history"], list) and all(isinstance(r, dict) for r in state["history"])}
    wrong = [key for key, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(f"{path}: not a train.py state (its {', '.join(wrong)}: not what train.py writes)")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    shapes = {n: tuple(t.shape) for n, t in state["trainable"].items()}
    if shapes != {n: tuple(p.shape) for n, p in params.items()}:
        raise ValueError(f"{path}: its adapter tensors do not fit this model and method")
    moments = {f"AdamW's {k} of parameter {i}": v for i, s in state["optimizer"]["state"].items()
               for k, v in (s.items() if isinstance(s, dict) else []) if isinstance(v, torch.Tensor)}
    check_tensors({**state["trainable"], **moments}, path)  # float and finite, once, at load
    return state


def valid_rng(state):
    """Whether a saved RNG state is one that rng_state() made: tried on new generators, ours untouched."""
    try:
        torch.Generator().set_state(state["torch"])
        random.Random().setstate(state["python"])
        return state["cuda"] is None or isinstance(state["cuda"], list)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError):
        return False


def resume(state_file, model, optimizer, device, rank, world):
    """Load the saved state into the adapter, AdamW and this process's RNG; (step, best, history, clock)."""
    with cli.user_input():
        state = load_state(state_file, model)
        try:  # an optimizer state of other parameters or groups
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{state_file}: its AdamW state does not fit this run ({type(e).__name__}: {e})") from None
    params = dict(model.named_parameters())
    for n, t in state["trainable"].items():
        params[n].data.copy_(t)
    # a run resumed with as many processes continues every process's dropout masks; otherwise the first
    # process continues the saved first one's and the others start afresh (exact when dropout is 0)
    ranks = state.get("rng_ranks")
    set_rng_state(ranks[rank] if ranks and len(ranks) == world else state["rng"] if rank == 0 else rng_state())
    return state["step"], state["best"], state["history"], state.get("clock", {"seconds": 0.0, "tokens": 0})


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(world):
    """Every process's RNG state (for dropout masks), in rank order; one process: its own only."""
    if world == 1:
        return None
    states = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


# -----------------------------------------------------------------------------
# Resume continues the same run only

def same_argument(key, saved, given):
    """Paths are the same when they name the same file or folder ("data/" is "./data", a link is its target)."""
    if key in ("model", "data", "adapter", "train_file") and isinstance(saved, str) and isinstance(given, str):
        return Path(saved).resolve() == Path(given).resolve()
    return saved == given


def check_run_folder(args):
    """--resume: a saved run in --out, with the same defining arguments. Otherwise: no run there to overwrite."""
    out = Path(args.out)
    state_file = out / STATE_FILE
    for path in (out / "args.json", out / "log.jsonl", state_file):  # train.py writes these files, never folders
        if path.exists() and not path.is_file():
            sys.exit(f"error: {path}: not a file (train.py keeps its run there); remove it, or choose another --out")
    if args.resume:
        if not state_file.is_file():
            what = ("start it without --resume" if not (out / "adapter_model.safetensors").is_file() else
                    f"it holds an adapter but no state to continue from: delete {out} to start again, or choose "
                    f"another --out")
            sys.exit(f"error: --resume: no saved run in {out} ({state_file} not found); {what}")
        with cli.user_input(out / "args.json"):
            saved = json.loads((out / "args.json").read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object of train.py's arguments")
        saved.setdefault("precision", args.precision)  # runs saved before --precision existed used the default
        defining = RUN_DEFINING + (("micro_batch_size",) if args.dropout > 0 else ())  # which masks each example gets
        changed = [k for k in defining if not same_argument(k, saved.get(k, RUN_DEFAULTS.get(k)), getattr(args, k))]
        if changed:
            sys.exit(f"error: --resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from the "
                     f"saved run in {out}; resume with the same arguments")
        if (out / FINGERPRINT).is_file():  # a run saved before fingerprints were: its arguments only
            with cli.user_input(out / FINGERPRINT):
                saved = json.loads((out / FINGERPRINT).read_text())
            now = fingerprint(args)
            for key, flag in (("data", "--train-file" if args.train_file else "--data"), ("model", "--model")):
                if saved.get(key) != now[key]:
                    files = sorted(set(saved.get(key) or {}) ^ set(now[key]) or
                                   {f for f in now[key] if saved[key][f] != now[key][f]})
                    sys.exit(f"error: --resume: the files of {flag} differ from the saved run's in {out} "
                             f"({', '.join(files)}); resume with the same files")
    elif state_file.is_file():
        sys.exit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out")
    elif (out / "adapter_model.safetensors").is_file():  # an older train.py's folder, or its checkpoint deleted
        sys.exit(f"error: {out} holds an adapter but no {state_file} to continue from; delete {out} to start "
                 f"again, or choose another --out")


def fingerprint(args):
    """SHA-256 digests of the files a run reads, by name: its training data, and its model's JSON files and
    weights (a weights file by its size and its first and last MiB: cheap for 16 GB, and a changed checkpoint
    changes its header). Saved in the run folder at its start, compared by --resume."""
    if args.train_file:
        data = {Path(args.train_file).resolve().name: Path(args.train_file)}  # a link: its target's name
    else:
        try:  # a task that is not there: load_examples says so, in one line
            tasks = commonsense.resolve_tasks(args.data, "train", args.tasks)
        except (ValueError, OSError):
            tasks = []
        data = {f"{t}/train.json": Path(args.data) / t / "train.json" for t in tasks}
    model = {p.name: p for p in sorted(Path(args.model).glob("*.json")) + sorted(Path(args.model).glob("*.safetensors"))}
    return {"data": {name: digest(path) for name, path in data.items()},
            "model": {name: digest(path, ends=path.suffix == ".safetensors") for name, path in model.items()}}


def digest(path, ends=False):
    """A file's SHA-256 (ends: of its size and its first and last MiB only); None if it is not a regular file
    (a link to /dev/zero would never end) or cannot be read."""
    h = hashlib.sha256()
    if not Path(path).is_file():
        return None
    try:
        if not ends:
            return adapters.sha256(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(str(size).encode() + f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    except OSError:
        return None
    return h.hexdigest()


# -----------------------------------------------------------------------------
# Several processes

def setup_distributed(device):
    """(rank, world size, device). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one
    process and nothing is set up. Several processes: one per GPU (nccl), or CPU processes (gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device
