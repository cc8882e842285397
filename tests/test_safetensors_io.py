"""safetensors_io.py: the format read and written exactly, and corrupt files refused naming the file."""
import json

import pytest
import torch

from conftest import shared
from safetensors_io import load_safetensors, save_safetensors


def test_safetensors_round_trip(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4), "bf16": torch.randn(5).to(torch.bfloat16), "f16": torch.randn(2, 2, 2).half(),
        "i64": torch.arange(7), "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5), "strided": torch.randn(4, 6).t(),
    }
    save_safetensors(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    back = load_safetensors(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + n])["__metadata__"] == {"format": "pt"} and (8 + n) % 8 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary file left behind


def test_written_tensors_are_readable_by_the_reference_layout(tmp_path):
    """Our writer's bytes for a fixture checkpoint reproduce every tensor of the original file."""
    original = load_safetensors(shared("fixtures", "models", "tiny-llama", "model.safetensors"))
    save_safetensors(original, tmp_path / "copy.safetensors")
    copy = load_safetensors(tmp_path / "copy.safetensors")
    assert all(torch.equal(copy[k], original[k]) for k in original)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:len(raw) // 2], "truncated"),
    (lambda raw: raw[:5], "not a safetensors file"),
    (lambda raw: raw[:8] + b"{not json" + raw[17:], "corrupt safetensors header"),
    (lambda raw: (10 ** 9).to_bytes(8, "little") + raw[8:], "corrupt safetensors file"),
])
def test_corrupt_safetensors_is_rejected_naming_the_file(tmp_path, damage, message):
    raw = shared("fixtures", "models", "tiny-llama", "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(damage(raw))
    with pytest.raises(ValueError, match=message) as e:
        load_safetensors(bad)
    assert str(bad) in str(e.value)
