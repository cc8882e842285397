"""Mutation testing of the exercises' grader: can a solution with one small slip pass it?

    python -m experiments.mutants                          # every exercise, about 30 s on one core
    python -m experiments.mutants --json results/mutants.json
    python -m experiments.mutants kv_cache --show killed   # one exercise, each mutant and what killed it

A mutant is the reference solution with one slip a student could make, made from the source by the AST:
`/` → `//` or `*`, `*` → `+` or `/`, `+` ↔ `-`, `**` → `*`, the operands of `@` swapped, a term of a sum
or difference dropped, a pair of neighbouring call arguments swapped, a factor transposed (`.T` added to
an operand of `@` or to F.linear's weight, or removed), a slice bound off by one, a constant changed
(0 → 1, 1 → 0 or 2, 2 → 1 or 3, n → n + 1, 0.5 → 1, a float f → 2f), `sum` ↔ `mean`, a minus sign
dropped, a comparison's boundary moved (`>` ↔ `>=`, `<` ↔ `<=`). Dims are constants:
`dim=1` → 0 or 2, `transpose(1, 2)` → (1, 3). The code mutated is what the reference runs (exercises/
reference/<exercise>.py and the functions of lora.py, hira.py, pera.py, dora.py, eval.py and model.py it
calls) and the same solution written plainly as a student would (exercises/reference/plain/<exercise>.py),
only the code that runs when they are graded, leaving out the guards that only raise on bad
arguments (the exercises take none) and the swapped arguments of functions symmetric in them.

Each mutant is graded in this process by exercises/grade.py's properties, in order, until one fails: the
mutant is killed by that property, or survives them all. A survivor is either in EQUIVALENT below, with
the reason it computes what the reference computes on every input the exercise allows, or a hole in the
grader. Score per exercise: killed / (mutants − equivalent). Exit status 1 when a mutant survives that
EQUIVALENT does not list.
"""
import argparse
import ast
import copy
import functools
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from exercises import grade

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "exercises" / "reference"
PLAIN = REFERENCE / "plain"  # the same solutions as a student writes them: plain torch, no repository file

# exercise -> {module the reference imports: the functions of it that the exercise is about}
TARGETS = {
    "lora_forward": {"lora": ["LoRALinear.__init__", "LoRALinear.forward", "LoRALinear.delta_weight",
                              "LoRALinear.merged"]},
    "effective_rank": {"eval": ["ranks"]},
    "hira_update": {"hira": ["HiRALinear.__init__", "HiRALinear.forward", "HiRALinear.delta_weight"]},
    "pera_factors": {"pera": ["pairs", "PERALinear.__init__", "PERALinear.expanded_factors", "PERALinear.idx"]},
    "h_gradient": {"pera": ["pairs", "PERALinear.__init__", "PERALinear.expanded_factors", "PERALinear.idx",
                            "PERALinear.delta_weight"]},
    "dora_norm": {"dora": ["DoRALinear.__init__", "DoRALinear.forward", "DoRALinear.weight_norm"]},
    "kv_cache": {"model": ["KVCache.__init__", "KVCache.layer", "LayerCache.update", "Attention.__init__",
                           "Attention.forward"]},
}
# functions whose result does not change when two neighbouring arguments swap (addcmul: t + v·a·b)
SYMMETRIC = {"promote_types", "maximum", "minimum", "transpose", "swapaxes", "add", "mul", "isclose", "addcmul"}

# The mutants that survive because they compute what the reference computes on every input the exercise
# allows: "exercise | file:function | before → after" -> why.
REPLACED = ("the reference hands the layer the grader's tensors in place of its A, B (and h) (exercises/reference's "
            "`using`), so the shapes and values __init__ gives them are never read")
NO_DROPOUT = "every exercise has dropout 0: nn.Identity() either way"
DROPOUT_0 = ("nn.Dropout(0.0) is the identity: every path computes the same (DoRA's dropout branch is its sum "
             "written with dropout(x) = x)")
DEGREE_K = ("the exercise is degree 2, where pera.py's general degree-k path (degree_k_indices, degree_k_factors) "
            "builds the same pairs in the same order and the same factors")
DEGREE_2 = "at degree 2 both conditions are false: the same branch runs"
NO_SCALING = "expanded_factors returns B̂ and Â without s (ΔW = s·B̂ Â): the scaling is never read"
HIRA_RANK = "HiRA has no α/r: the rank only sizes the A and B that `using` replaces"
META_W0 = ("the meta-device W0 only sizes the layer's A and B, which `using` replaces; expanded_factors never "
           "reads W0")
KV_REPLACED = ("the reference puts the grader's caches and `length` in place of what KVCache allocates "
               "(cache.k[0], cache.v[0], cache.length = cache_k, cache_v, length)")
KV_CONFIG = ("Attention reads only the head counts and head_dim of Config; vocabulary, MLP size and layer count "
             "size nothing it uses (layer 0's cache is the one replaced)")
ONE_TOKEN = ("a decode step has one token (T = 1): moving a dimension of size 1 keeps the data's order, and "
             "T > 1, T > 2 are both false")
ROPE_OFF = "the reference turns RoPE off (cos = 1, sin = 0): apply_rope(cos, q, sin) = cos·q = q as well"
SDPA_KEYS = ("F.scaled_dot_product_attention on the CPU reads as many keys as there are values (torch 2.13): the "
             "extra key is never used")
DROPOUT, DROPOUT_GE = (f"nn.Dropout(dropout) if dropout > 0 else nn.Identity() → "
                       f"nn.Dropout(dropout) if dropout {op} else nn.Identity()" for op in ("> 1", ">= 0"))
KAIMING = "nn.init.kaiming_uniform_(self.A, a=math.sqrt(5)) → nn.init.kaiming_uniform_(self.A, a=math.sqrt(6))"
A_SHAPE = "torch.{0}(rank, base.in_features, device=w.device, dtype=dtype) → " \
          "torch.{0}(base.in_features, rank, device=w.device, dtype=dtype)"
B_SHAPE = "torch.zeros(base.out_features, rank, device=w.device, dtype=dtype) → " \
          "torch.zeros(rank, base.out_features, device=w.device, dtype=dtype)"
EQUIVALENT = {
    **{f"{exercise} | {init} | {mutant}": why
       for exercise, init, mutants in [
           ("lora_forward", "lora.py:LoRALinear.__init__", [A_SHAPE.format("empty"), B_SHAPE]),
           ("pera_factors", "pera.py:PERALinear.__init__", [A_SHAPE.format("zeros"), B_SHAPE]),
           ("h_gradient", "pera.py:PERALinear.__init__", [A_SHAPE.format("zeros"), B_SHAPE]),
           ("dora_norm", "dora.py:DoRALinear.__init__", [])]
       for mutant, why in [(DROPOUT, NO_DROPOUT), (KAIMING, REPLACED)] + [(m, REPLACED) for m in mutants]
       + [(DROPOUT_GE, DROPOUT_0)] * (exercise != "hira_update")},  # HiRA fuses its forward only without dropout
    **{f"{exercise} | pera.py:PERALinear.{where} | {mutant}": why
       for exercise in ("pera_factors", "h_gradient")
       for where, mutant, why in [
           ("expanded_factors", "self.degree > 2 → self.degree > 1", DEGREE_K),
           ("expanded_factors", "self.degree > 2 → self.degree > 3", DEGREE_2),
           ("expanded_factors", "self.degree > 2 → self.degree >= 2", DEGREE_K),
           ("idx", "self.degree == 2 → self.degree == 1", DEGREE_K),
           ("idx", "self.degree == 2 → self.degree == 3", DEGREE_K)]},
    "hira_update | hira.py:HiRALinear.__init__ | check_rank('rank', rank, least=1) → check_rank('rank', rank, least=0)":
        "the grader builds HiRA at ranks >= 1 only: the least rank accepted is argument checking, not the update",
    "pera_factors | pera.py:PERALinear.__init__ | self.alpha / rank → self.alpha // rank": NO_SCALING,
    "pera_factors | pera.py:PERALinear.__init__ | self.alpha / rank → self.alpha * rank": NO_SCALING,
    **{f"pera_factors | exercises/reference/pera_factors.py:expanded_factors | "
       f"torch.empty(B.shape[0], A.shape[1], device='meta') → torch.empty({after}, device='meta')": META_W0
       for after in ("A.shape[1], B.shape[0]", "B.shape[1], A.shape[1]", "B.shape[0], A.shape[0]")},
    **{f"hira_update | exercises/reference/hira_update.py:{function} | hira.HiRALinear({base}, A.shape[0]) → "
       f"hira.HiRALinear({base}, A.shape[1])": HIRA_RANK
       for function, base in (("delta_weight", "linear(W0)"), ("forward", "linear(W0, bias)"))},
    **{f"dora_norm | {where} | B @ (A @ A.T) * B → B @ (A @ A.T).T * B": "A Aᵀ is symmetric"
       for where in ("dora.py:DoRALinear.weight_norm", "exercises/reference/plain/dora_norm.py:row_norm")},
    **{f"kv_cache | exercises/reference/kv_cache.py:decode_step | (k.shape[1], cache_k.shape[2]) → "
       f"(k.shape[1], cache_k.shape[{d}])": KV_REPLACED for d in (1, 3)},
    "kv_cache | exercises/reference/kv_cache.py:decode_step | KVCache(config, batch, max_len, q.dtype, q.device) → "
    "KVCache(config, max_len, batch, q.dtype, q.device)": KV_REPLACED,
    "kv_cache | model.py:KVCache.__init__ | 0 → 1": KV_REPLACED,
    **{"kv_cache | exercises/reference/kv_cache.py:decode_step | Config(vocab_size=1, hidden_size=d, "
       "intermediate_size=1, num_hidden_layers=1, num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd) → "
       f"Config({after}, num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd)": KV_CONFIG
       for after in ("vocab_size=0, hidden_size=d, intermediate_size=1, num_hidden_layers=1",
                     "vocab_size=2, hidden_size=d, intermediate_size=1, num_hidden_layers=1",
                     "vocab_size=1, hidden_size=d, intermediate_size=0, num_hidden_layers=1",
                     "vocab_size=1, hidden_size=d, intermediate_size=2, num_hidden_layers=1",
                     "vocab_size=1, hidden_size=d, intermediate_size=1, num_hidden_layers=2")},
    **{f"kv_cache | {where} | {name}.transpose(1, 2) → {name}.transpose({dims})": ONE_TOKEN
       for where, name in (("exercises/reference/kv_cache.py:decode_step", "t"), ("model.py:Attention.forward", "y"))
       for dims in ("2, 2", "1, 1")},
    "kv_cache | model.py:Attention.forward | mask is None and T > 1 → mask is None and T > 2": ONE_TOKEN,
    "kv_cache | model.py:Attention.forward | y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim) → "
    "y.transpose(1, 2).reshape(T, B, self.n_head * self.head_dim)": ONE_TOKEN,
    "kv_cache | model.py:Attention.forward | (apply_rope(q, cos, sin), apply_rope(k, cos, sin)) → "
    "(apply_rope(cos, q, sin), apply_rope(k, cos, sin))": ROPE_OFF,
    "kv_cache | model.py:Attention.forward | (apply_rope(q, cos, sin), apply_rope(k, cos, sin)) → "
    "(apply_rope(q, cos, sin), apply_rope(cos, k, sin))": ROPE_OFF,
    "kv_cache | model.py:LayerCache.update | (self.k[:, :, :end], self.v[:, :, :end]) → "
    "(self.k[:, :, :end + 1], self.v[:, :, :end])": SDPA_KEYS,
    "kv_cache | exercises/reference/plain/kv_cache.py:decode_step | keys.transpose(-2, -1) → keys.transpose(2, -1)":
        "keys is 4-d: its dim 2 is its dim -2",
    "effective_rank | eval.py:ranks | int((s > s.max() * max(dw.shape) * torch.finfo(dw.dtype).eps).sum()) if "
    "s.max() > 0 else 0 → int((s > s.max() * max(dw.shape) * torch.finfo(dw.dtype).eps).sum()) if s.max() >= 0 "
    "else 0": "for the zero matrix the threshold rule counts 0 as well: no singular value is above 0",
    "effective_rank | eval.py:ranks | s > s.max() * max(dw.shape) * torch.finfo(dw.dtype).eps → "
    "s >= s.max() * max(dw.shape) * torch.finfo(dw.dtype).eps": "the zero matrix is answered before this line, and "
    "a singular value exactly at σ_1 · max(shape) · ε has probability 0",
}

# ---------------------------------------------------------------------------------------------------
# Making mutants


def parents(tree):
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def functions(tree):
    """{qualified name: its FunctionDef} of the module's top-level functions and of its classes' methods."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({f"{node.name}.{f.name}": f for f in node.body if isinstance(f, ast.FunctionDef)})
    return found


def transposed(node):
    """node.T, or node without its .T."""
    if isinstance(node, ast.Attribute) and node.attr in ("T", "mT"):
        return node.value
    return ast.Attribute(value=node, attr="T", ctx=ast.Load())


def changed_constants(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(value, int):
        return {0: [1], 1: [0, 2], 2: [1, 3]}.get(value, [value + 1])
    return {0.0: [1.0], 0.5: [1.0]}.get(value, [2 * value])


def call_name(call):
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def mutations(node):
    """[(kind, the node that replaces it)] for one AST node."""
    out = []
    if isinstance(node, ast.BinOp):
        ops = {ast.Div: [ast.FloorDiv, ast.Mult], ast.Mult: [ast.Add, ast.Div], ast.Add: [ast.Sub],
               ast.Sub: [ast.Add], ast.Pow: [ast.Mult]}.get(type(node.op), [])
        out += [("operator", ast.BinOp(node.left, op(), node.right)) for op in ops]
        if isinstance(node.op, ast.MatMult):
            out.append(("@ swapped", ast.BinOp(node.right, ast.MatMult(), node.left)))
            out.append(("transposed", ast.BinOp(transposed(node.left), ast.MatMult(), node.right)))
            out.append(("transposed", ast.BinOp(node.left, ast.MatMult(), transposed(node.right))))
        if isinstance(node.op, (ast.Add, ast.Sub)):
            out += [("term dropped", node.left), ("term dropped", node.right)]
    elif isinstance(node, ast.Attribute) and node.attr in ("T", "mT"):
        out.append(("transposed", node.value))
    elif isinstance(node, ast.Call):
        name, args = call_name(node), node.args
        if name not in SYMMETRIC and not any(isinstance(a, ast.Starred) for a in args):
            for i in range(len(args) - 1):
                if ast.dump(args[i]) != ast.dump(args[i + 1]):
                    swapped = args[:i] + [args[i + 1], args[i]] + args[i + 2:]
                    out.append(("arguments swapped", ast.Call(node.func, swapped, node.keywords)))
        if ast.unparse(node.func) == "F.linear" and len(args) >= 2:
            out.append(("transposed", ast.Call(node.func, [args[0], transposed(args[1])] + args[2:], node.keywords)))
        if name in ("sum", "mean"):
            other = "mean" if name == "sum" else "sum"
            f = copy.copy(node.func)
            if isinstance(f, ast.Attribute):
                f.attr = other
            else:
                f.id = other
            out.append(("sum/mean", ast.Call(f, args, node.keywords)))
    elif isinstance(node, ast.Slice):
        for field in ("lower", "upper"):
            bound = getattr(node, field)
            if bound is not None:
                for op in (ast.Add, ast.Sub):
                    s = copy.copy(node)
                    setattr(s, field, ast.BinOp(bound, op(), ast.Constant(1)))
                    out.append(("slice off by one", s))
    elif isinstance(node, ast.Constant):
        out += [("constant", ast.Constant(v)) for v in changed_constants(node.value)]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        out.append(("sign dropped", node.operand))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1:
        edge = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt}.get(type(node.ops[0]))
        if edge:
            out.append(("boundary", ast.Compare(node.left, [edge()], node.comparators)))
    return out


def guard_tests(function):
    """The nodes inside the tests of `if ...: raise ...`: argument checks, which the exercises never reach."""
    skip = set()
    for node in ast.walk(function):
        if isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body) and not node.orelse:
            skip |= set(ast.walk(node.test))
    return skip


def covered(node, ran):
    """Whether an instruction that ran lies within the node's source span (`ran`: positions of instructions)."""
    start, end = (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)
    return any(start <= (p[0], p[2]) and (p[1], p[3]) <= end for p in ran)


def shown(node, up):
    """The expression around node that its mutant is named by: node's parent, until it reads as code."""
    while isinstance(up.get(node), ast.expr) and (
            isinstance(node, (ast.Constant, ast.Slice, ast.Name, ast.Tuple)) or len(ast.unparse(node)) < 16):
        node = up[node]
    while isinstance(up.get(node), (ast.keyword, ast.Slice, ast.Tuple, ast.UnaryOp)):
        node = up[up[node]] if isinstance(up[node], ast.keyword) else up[node]
    return node


def candidates(tree, names, ran):
    """[(node index, index of the node it is shown by, function, mutation number)] of a module's mutants.

    Only the nodes whose code ran when the reference was graded are mutated: a branch the exercise never
    takes (HiLoRA's inside HiRA's code, a layer without a bias) is no part of it."""
    index, up = {node: i for i, node in enumerate(ast.walk(tree))}, parents(tree)
    found = []
    for qualname, function in functions(tree).items():
        if names is not None and qualname not in names:
            continue
        skip = guard_tests(function)
        body = function.body[1:] if ast.get_docstring(function) else function.body  # never the docstring
        for node in (n for stmt in body for n in ast.walk(stmt)):
            if not isinstance(node, ast.expr) or node in skip or not covered(node, ran):
                continue
            for number in range(len(mutations(node))):
                found.append((index[node], index[shown(node, up)], qualname, number))
    return found


class Swapped:
    """`with Swapped(up, old, new):` the tree holds `new` where it held `old`, and `old` again after the block."""

    def __init__(self, up, old, new):
        self.parent, self.old, self.new = up[old], old, new

    def put(self, old, new):
        for field, value in ast.iter_fields(self.parent):
            if value is old:
                setattr(self.parent, field, new)
            elif isinstance(value, list) and any(v is old for v in value):
                value[[v is old for v in value].index(True)] = new

    def __enter__(self):
        self.put(self.old, self.new)

    def __exit__(self, *exc):
        self.put(self.new, self.old)


def located(new, old):
    """`new` with the source position of `old` where it has none (a node made by `mutations`)."""
    if not hasattr(new, "lineno"):
        ast.copy_location(new, old)
    return ast.fix_missing_locations(new)


def coverage(exercise, files):
    """{file: the source positions of the instructions executed while the reference of `exercise` is graded}."""
    ran = {str(f): set() for f in files}

    def local(frame, event, arg):
        if event == "opcode":
            ran[frame.f_code.co_filename].add((frame.f_code, frame.f_lasti))
        return local

    def tracer(frame, event, arg):
        if frame.f_code.co_filename not in ran:
            return None
        frame.f_trace_opcodes = True
        return local

    for solutions in (REFERENCE, PLAIN):
        sys.settrace(tracer)
        try:
            results = grade.grade(exercise, solutions)
        finally:
            sys.settrace(None)
        assert all(status == "pass" for status, _, _ in results), f"{solutions} fails {exercise}: {results}"
    positions = {}
    for file, hits in ran.items():
        table = {code: list(code.co_positions()) for code, _ in hits}
        positions[file] = {p for p in (table[code][lasti // 2] for code, lasti in hits) if None not in p}
    return positions


class Timeout(Exception):
    pass


def first_failure(exercise, path, seconds=20):
    """The title of the first property the solution at `path` fails, or None when it passes them all."""
    def alarm(signum, frame):
        raise Timeout()
    watch = hasattr(signal, "SIGALRM")  # not on Windows: there a mutant that loops forever hangs the run
    previous = signal.signal(signal.SIGALRM, alarm) if watch else None
    if watch:
        signal.alarm(seconds)
    try:
        try:
            sol = grade.load(exercise, Path(path))
        except grade.Wrong:
            return "the solution file loads"
        for title, check in grade.PROPERTIES[exercise]:
            try:
                check(sol)
            except (grade.Wrong, grade.NotYet):
                return title
            except Timeout:
                return "(runs past the time limit)"
            except Exception as e:  # the grader itself broke: a traceback for the student, still not a pass
                return f"(the grader raised {type(e).__name__}: {e})"
        return None
    except Timeout:
        return "(runs past the time limit)"
    finally:
        if watch:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def grade_module_mutant(exercise, name, code, path):
    """Grade the reference with module `name` made by `code` (the mutated module, compiled)."""
    module = ModuleType(name)
    module.__file__ = str(path)
    original = sys.modules[name]
    sys.modules[name] = module
    try:
        try:
            exec(code, module.__dict__)
        except Exception:
            return "(the module does not load)"
        return first_failure(exercise, REFERENCE)
    finally:
        sys.modules[name] = original


def mutants(exercise):
    """{key: (kind, grade)} of every mutant of one exercise, in source order; grade() grades it in this process
    and returns the title of the first property it fails, None when it passes them all."""
    modules = {name: Path(importlib.import_module(name).__file__) for name in TARGETS[exercise]}
    ref, plain = REFERENCE / f"{exercise}.py", PLAIN / f"{exercise}.py"
    ran = coverage(exercise, [ref, plain, *modules.values()])
    made = {}
    for path, module in [(ref, None), *((path, name) for name, path in modules.items()), (plain, None)]:
        tree = ast.parse(path.read_text())  # one tree per file: each mutant swaps its node in and out again
        nodes, up = list(ast.walk(tree)), parents(tree)
        names = None if module is None else TARGETS[exercise][module]
        for node_index, show_index, qualname, number in candidates(tree, names, ran[str(path)]):
            old = nodes[node_index]
            kind, new = mutations(old)[number]
            new = located(new, old)
            before = ast.unparse(nodes[show_index])
            with Swapped(up, old, new):
                after = ast.unparse(new if show_index == node_index else nodes[show_index])
            k = f"{exercise} | {path.relative_to(ROOT).as_posix()}:{qualname} | {before} → {after}"
            k += f" #{sum(m.split(' #')[0] == k for m in made) + 1}" if k in made else ""
            made[k] = kind, functools.partial(grade_mutant, exercise, tree, Swapped(up, old, new), path, module)
    return made


def grade_mutant(exercise, tree, swap, path, module):
    """Grade one mutant: the mutated module in place of `module`, or the mutated reference file itself."""
    with swap:
        code = compile(tree, str(path), "exec") if module else ast.unparse(tree)
    if module:
        return grade_module_mutant(exercise, module, code, path)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{exercise}.py"
        file.write_text(code)
        return first_failure(exercise, file)


def run(exercise, out=print):
    """{mutants, killed, equivalent, survived, score, rows} of one exercise."""
    rows = []
    for k, (kind, grade_it) in mutants(exercise).items():
        killer = grade_it()
        status = "killed" if killer else "equivalent" if k in EQUIVALENT else "survived"
        rows.append({"mutant": k, "kind": kind, "status": status, "killed_by": killer})
        out(f"  {status:10}  {k}" + (f"\n              by: {killer}" if killer else ""))
    count = {s: sum(r["status"] == s for r in rows) for s in ("killed", "equivalent", "survived")}
    live = len(rows) - count["equivalent"]
    return {"mutants": len(rows), **count, "score": round(count["killed"] / live, 4) if live else 1.0, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.mutants", description=__doc__.split("\n\n")[0])
    p.add_argument("exercises", nargs="*", metavar="EXERCISE", help=f"(default: all) {', '.join(grade.EXERCISES)}")
    p.add_argument("--json", help="write the results here (e.g. results/mutants.json)")
    p.add_argument("--show", choices=["survived", "killed"], default="survived",
                   help="print each survivor (default), or every mutant with what killed it")
    args = p.parse_args(argv)
    unknown = [e for e in args.exercises if e not in grade.EXERCISES]
    if unknown:
        p.error(f"unknown exercise {unknown[0]!r}; the exercises are {', '.join(grade.EXERCISES)}")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # a mutant's x.T on a 3-d tensor, and the like
    start, results = time.time(), {}
    for exercise in args.exercises or grade.EXERCISES:
        printer = print if args.show == "killed" else \
            (lambda line: print(line) if line.lstrip().startswith("survived") else None)
        print(exercise)
        results[exercise] = run(exercise, out=printer)
    equivalent = {r["mutant"] for res in results.values() for r in res["rows"] if r["status"] == "equivalent"}
    stale = [k for k in EQUIVALENT if k.split(" | ")[0] in results and k not in equivalent]
    seconds = round(time.time() - start, 1)
    print(f"\n{'exercise':16} {'mutants':>8} {'killed':>7} {'equivalent':>11} {'survived':>9} {'score':>7}")
    for exercise, r in results.items():
        print(f"{exercise:16} {r['mutants']:8} {r['killed']:7} {r['equivalent']:11} {r['survived']:9} "
              f"{100 * r['score']:6.1f}%")
    print(f"{seconds} s")
    if stale:
        print(f"{len(stale)} entries of EQUIVALENT name no surviving mutant (killed, or no longer made): {stale[0]}")
    if args.json:
        summary = {"command": "python -m experiments.mutants " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "seconds": seconds, "exercises": results,
                   "equivalent": {k: v for k, v in EQUIVALENT.items() if k.split(" | ")[0] in results}}
        tmp = Path(args.json).with_suffix(".json.partial")
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, args.json)
    return 0 if not any(r["survived"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
