"""What makes a train.py run safe to stop, kill, resume and share a machine with; the loop calls each in a line.

One writer per folder. `folder_lock` holds out/.lock (made with O_EXCL, holding pid and host) for the whole
    run: a second train.py on the same --out is refused with one line. A lock whose process is gone (a
    kill -9) is stale and taken over, and the temporary files that run left half-written are removed.
A step is one unit. Between `HeldInterrupt.hold()` (before the update) and `release()` (after the step's
    state is saved), Ctrl-C waits; a state therefore always holds a whole step: update, validation, best
    adapter, log line. A second Ctrl-C does not wait: the step is abandoned, the state before it stands.
Resume is the uninterrupted run, byte for byte. The state file (`save_state`, written atomically) holds
    the adapter, AdamW's moments, the step, the best so far, the log and the RNG states of every process
    (`rng_state`, `gather_rng`), so a resumed run draws the same dropout masks (the batches are a pure
    function of seed and epoch). A kill at any moment leaves a state to resume from: one is written before
    the first step.
Resume continues the same run only. `check_run_folder` compares the arguments that define a run
    (RUN_DEFINING) with the folder's args.json and names any that differ; without --resume a folder that
    already holds a run is refused rather than overwritten.
A NaN stops cleanly. A non-finite loss or gradient norm stops the run before its update, with one line
    (`exit_not_finite`) naming the state and the best adapter kept; nothing of the bad step is saved.
Several processes. `setup_distributed` joins the torchrun job (nccl on GPUs, gloo on CPUs); only the first
    process takes the lock and writes files.
"""
import json
import os
import random
import re
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from support import cli

STATE_FILE = Path("checkpoint") / "state.pt"  # inside --out
TEMPORARY = re.compile(r"\..+\.tmp\d+|state\.pt\.tmp")  # what write_json, save_safetensors, save_state write first
# Arguments that define a run: --resume refuses to continue a run with different ones.
RUN_DEFINING = ("model", "data", "tasks", "method", "rank", "alpha", "dropout", "terms", "degree", "amplitude", "omega",
                "lora_rank", "targets", "lr",
                "batch_size", "epochs", "max_steps", "warmup_steps", "val_size", "seed", "train_on_inputs",
                "cutoff", "weight_decay", "grad_clip", "init", "h_lr_ratio", "train_file", "precision")
RUN_DEFAULTS = {"init": "code", "h_lr_ratio": 1.0, "amplitude": 5e-4, "omega": 1e3}  # what a run saved before
# these arguments existed used


# -----------------------------------------------------------------------------
# One writer per folder

@contextmanager
def folder_lock(out):
    """Hold out/.lock (created with O_EXCL, holding our pid and host) while training into out.

    A second train.py on the same folder is refused; a lock whose process is gone (killed) is stale and
    taken over. Once it is ours no one else writes in out, so temporary files left there are a killed
    run's: they are removed.
    """
    lock = out / ".lock"
    if int(os.environ.get("RANK", "0")) > 0:  # a torchrun job's other processes: the first one holds the lock
        yield
        return
    with cli.user_input():
        out.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = read_lock(lock)
                if holder is not None and alive(*holder):
                    sys.exit(f"error: {out} is in use by another train.py (pid {holder[0]} on host {holder[1]}); wait "
                             f"for it to end or choose another --out (if no such run exists, delete {lock})")
                lock.unlink(missing_ok=True)  # stale; a race with another run taking it over is left to O_EXCL
        else:
            sys.exit(f"error: {out}: could not take {lock}")
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        for folder in (out, out / "checkpoint"):
            for leftover in folder.glob("*tmp*") if folder.is_dir() else []:
                if TEMPORARY.fullmatch(leftover.name):
                    leftover.unlink()
    try:
        yield
    finally:
        if read_lock(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink()


def read_lock(lock):
    """(pid, host) of a lock file, or None when it is absent or unreadable (killed before writing it)."""
    try:
        holder = json.loads(lock.read_text())
        return int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alive(pid, host):
    """Whether the process holding a lock still runs; one on another host is assumed to."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


# -----------------------------------------------------------------------------
# A step is one unit: Ctrl-C waits for its end

class HeldInterrupt:
    """Ctrl-C between hold() and release() waits for release(), which raises it then.

    A step is one unit: its update, validation, best adapter, log line and state. An interrupt inside
    it would save a state that has the step's update but not its record (or its adapter); held to the
    step's end, it saves a state that a resumed run continues exactly. A second Ctrl-C does not wait:
    the step is abandoned (`abandoned`), and the state saved before it is the one to resume from.
    """

    def __init__(self):
        self.pending, self.abandoned, self.previous = False, False, None

    def hold(self):
        # only the main thread can set a handler; a SIGINT ignored (nohup, a background job) stays ignored
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self.previous = signal.signal(signal.SIGINT, self._note) or signal.default_int_handler

    def _note(self, signum, frame):
        if self.pending:
            self.abandoned = True
            raise KeyboardInterrupt
        self.pending = True
        tqdm.write("interrupt: finishing this step, then saving the state (Ctrl-C again: stop now, without it)")

    def release(self, raise_pending=True):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        if self.pending and raise_pending:
            self.pending = False
            raise KeyboardInterrupt


def exit_interrupted(step, saved_step, state_file, world, abandoned):
    """The line a Ctrl-C ends the run with: which state is kept, and how to continue. One process whose
    step was not abandoned has just saved the state after `step`; otherwise the state saved last stands."""
    if world > 1:  # the other processes' RNG states cannot be gathered now
        sys.exit(f"\ninterrupted after step {step}; the state saved last in {state_file} (step {saved_step}) "
                 f"is kept. Continue with the same arguments plus --resume.")
    if abandoned:
        sys.exit(f"\ninterrupted twice: stopped inside step {step}, without saving it; the state after step "
                 f"{saved_step} in {state_file} is kept. Continue with the same arguments plus --resume.")
    sys.exit(f"\ninterrupted after step {step}; state saved in {state_file}. Continue with the same "
             f"arguments plus --resume.")


def exit_not_finite(error, saved_step, state_file, best, out):
    """The line a NaN or infinite loss (or gradient norm) ends the run with: what was kept, what to try."""
    kept = (f"the best adapter so far (step {best['step']}) in {out}" if best["step"] is not None else
            "no adapter (none was saved yet)")
    sys.exit(f"error: {error}: stopped without saving this step. Kept: the state after step {saved_step} in "
             f"{state_file}, and {kept}. Try a lower --lr or a smaller --rank, in another --out (a resumed "
             f"run would repeat the same steps).")


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
    torch.save(state, tmp)
    tmp.replace(path)


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
    """Paths are the same when they name the same folder ("data/" is "./data")."""
    if key in ("model", "data") and isinstance(saved, str) and isinstance(given, str):
        return Path(saved).resolve() == Path(given).resolve()
    return saved == given


def check_run_folder(args):
    """--resume: a saved run in --out, with the same defining arguments. Otherwise: no run there to overwrite."""
    out = Path(args.out)
    state_file = out / STATE_FILE
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
        changed = [k for k in RUN_DEFINING if not same_argument(k, saved.get(k, RUN_DEFAULTS.get(k)), getattr(args, k))]
        if changed:
            sys.exit(f"error: --resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from the "
                     f"saved run in {out}; resume with the same arguments")
    elif state_file.is_file():
        sys.exit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out")
    elif (out / "adapter_model.safetensors").is_file():  # an older train.py's folder, or its checkpoint deleted
        sys.exit(f"error: {out} holds an adapter but no {state_file} to continue from; delete {out} to start "
                 f"again, or choose another --out")


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
