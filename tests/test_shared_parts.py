"""The parts the five adapter files repeat on purpose, so that each can be copied alone, stay identical.

lora.py, hira.py, pera.py, dora.py and loran.py each carry their own `TARGETS`, module functions
`inject`, `merge` and `is_adapter`, and on the layer class the `merged()` method and the `weight` and
`bias` properties. A fix made in one copy and not the others would go unnoticed by the numerical tests of
the method it was made for; here each copy's source (inspect.getsource) must equal lora.py's once the
file's class name is replaced by LoRALinear. Nothing else is normalised: no whitespace, comment or
docstring is excluded, so every one of these parts is written without naming its method's own details.
"""
import difflib
import inspect
from pathlib import Path

import pytest

import dora
import hira
import lora
import loran
import pera
from support import adapters

ROOT = Path(__file__).resolve().parents[1]
FILES = {"hira": (hira, "HiRALinear"), "pera": (pera, "PERALinear"), "dora": (dora, "DoRALinear"),
         "loran": (loran, "LoRANLinear")}  # compared with lora.py's LoRALinear
PARTS = ("TARGETS", "inject", "merge", "is_adapter", "Linear.merged", "Linear.weight", "Linear.bias")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")  # the layers PERA's paper adapts


def source(module, class_name, part):
    """The source of `part` in module, with the file's class name replaced by LoRALinear."""
    if part == "TARGETS":
        text = repr(module.TARGETS)
    elif part.startswith("Linear."):
        attribute = inspect.getattr_static(getattr(module, class_name), part.split(".")[1])
        text = inspect.getsource(attribute.fget if isinstance(attribute, property) else attribute)
    else:
        text = inspect.getsource(getattr(module, part))
    return text.replace(class_name, "LoRALinear")


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("name", FILES)
def test_shared_part_is_lora_pys_after_renaming_the_class(name, part):
    module, class_name = FILES[name]
    ours, reference = source(module, class_name, part), source(lora, "LoRALinear", part)
    diff = "".join(difflib.unified_diff(reference.splitlines(True), ours.splitlines(True), "lora.py", f"{name}.py"))
    assert ours == reference, f"{part} in {name}.py differs from lora.py's (class renamed):\n{diff}"


def test_the_parts_compared_are_the_real_ones():
    # An empty or wrong source would compare equal everywhere: check that each part is what its name says.
    assert source(lora, "LoRALinear", "inject").startswith("def inject(model, rank, *, targets=TARGETS")
    assert source(lora, "LoRALinear", "merge").startswith("def merge(model)")
    assert source(lora, "LoRALinear", "Linear.merged").lstrip().startswith("@torch.no_grad()\n    def merged(self)")
    assert "model.get_submodule(name).merged()" in source(lora, "LoRALinear", "merge")
    assert "self.base.bias" in source(lora, "LoRALinear", "Linear.bias")
    assert "delta_weight" in source(lora, "LoRALinear", "Linear.weight")


def test_default_targets_come_from_the_adapter_files_and_are_not_written_again():
    assert lora.TARGETS == DEFAULT_TARGETS
    assert adapters.DEFAULT_TARGETS is lora.TARGETS
    # The literal tuple lives in the five adapter files only (tests may keep it as a reference).
    literal = repr(DEFAULT_TARGETS)[1:-1]  # "'q_proj', 'k_proj', ..."
    spellings = (literal, literal.replace("'", '"'))
    owners = {"lora.py", "hira.py", "pera.py", "dora.py", "loran.py"}
    code = [*ROOT.glob("*.py"), *(ROOT / "support").glob("*.py"), *(ROOT / "experiments").glob("*.py"),
            *(ROOT / ".ci").glob("*.py")]  # not tests/, .venv/
    found = sorted(path.name for path in code if any(s in path.read_text() for s in spellings))
    assert set(found) == owners, f"the targets tuple is written out in {sorted(set(found) - owners)}"


def test_the_shared_parts_are_short():
    """inject at most 20 lines and the whole shared block at most 40, as minLoRA keeps its wrapping: the parts
    a reader skips to reach the method must not outweigh it."""
    lines = {part: len(source(lora, "LoRALinear", part).rstrip("\n").splitlines()) for part in PARTS if part != "TARGETS"}
    assert lines["inject"] <= 20, lines
    assert sum(lines.values()) <= 40, lines
