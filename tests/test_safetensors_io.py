"""safetensors_io.py: the format read and written exactly; corrupt files, bad entries and bad indexes refused
naming the file."""
import json

import pytest
import torch
from conftest import fixture

from support.safetensors_io import check_tensors, load_checkpoint_tensors, load_safetensors, save_safetensors


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
    original = load_safetensors(fixture("models", "tiny-llama", "model.safetensors"))
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
    raw = fixture("models", "tiny-llama", "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(damage(raw))
    with pytest.raises(ValueError, match=message) as e:
        load_safetensors(bad)
    assert str(bad) in str(e.value)


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return len(blob).to_bytes(8, "little") + blob + data


@pytest.mark.parametrize("header, message", [
    ([], "corrupt safetensors header (not a JSON object)"),
    ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, "corrupt or unsupported header entry for tensor 'w'"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "corrupt or unsupported header entry for tensor 'w'"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "tensor 'w' has data_offsets [0, 8] that do not fit its shape [3] F32"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "or the file (8 data bytes; truncated?)"),
    ({"w": {"dtype": "F32", "shape": [-1, -2], "data_offsets": [0, 8]}}, "tensor 'w' has shape [-1, -2] and data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, "expected integers >= 0"),
    ({"w": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, "expected integers >= 0"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]}}, "expected integers >= 0"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
     "tensors 'a' and 'b' overlap (their data_offsets share bytes)"),
    ({"a": {"dtype": "I32", "shape": [1], "data_offsets": [4, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
     "tensors 'b' and 'a' overlap"),
])
def test_bad_header_entries_name_the_file_and_the_tensor(tmp_path, header, message):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(safetensors_bytes(header, bytes(8)))
    with pytest.raises(ValueError) as e:
        load_safetensors(bad)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value)


def test_an_unsupported_dtype_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"cannot save tensor 'z' of dtype torch.complex64"):
        save_safetensors({"a": torch.ones(2), "z": torch.ones(2, dtype=torch.complex64)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_sharded_folder_is_read_through_its_index_and_checked_against_it(tmp_path):
    a, b = torch.arange(3.0), torch.ones(2, 2)
    save_safetensors({"a": a}, tmp_path / "s1.safetensors")
    save_safetensors({"b": b}, tmp_path / "s2.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    tensors = load_checkpoint_tensors(tmp_path)
    assert tensors.keys() == {"a", "b"} and torch.equal(tensors["a"], a) and torch.equal(tensors["b"], b)
    index.write_text(json.dumps({"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors"}}))  # swapped
    with pytest.raises(ValueError) as e:
        load_checkpoint_tensors(tmp_path)
    assert str(e.value) == f"{tmp_path / 's1.safetensors'}: tensor 'a' is not listed for this shard in {index.name}"
    for content in ("{oops", json.dumps({"metadata": {}})):
        index.write_text(content)
        with pytest.raises(ValueError) as e:
            load_checkpoint_tensors(tmp_path)
        assert str(e.value).startswith(f"{index}: not a valid safetensors index")
    index.unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_checkpoint_tensors(tmp_path)
    assert str(e.value) == f"{tmp_path}: no model.safetensors or model.safetensors.index.json"


def test_a_header_nested_past_the_parser_is_one_error(tmp_path):
    bad = tmp_path / "deep.safetensors"
    blob = b"[" * 100_000 + b"]" * 100_000
    bad.write_bytes(len(blob).to_bytes(8, "little") + blob)
    with pytest.raises(ValueError, match="corrupt safetensors header \\(JSON nested too deeply\\)"):
        load_safetensors(bad)
    (tmp_path / "model.safetensors.index.json").write_bytes(blob)
    with pytest.raises(ValueError, match="not a valid safetensors index \\(JSON nested too deeply\\)"):
        load_checkpoint_tensors(tmp_path)


@pytest.mark.parametrize("weight_map", [{"a": 1}, {"a": None}, {"a": "../x/model.safetensors"}, {"a": "sub/s1.safetensors"},
                                        {"a": "s1.bin"}, ["s1.safetensors"]])
def test_an_index_names_shards_in_its_own_folder(tmp_path, weight_map):
    save_safetensors({"a": torch.ones(2)}, tmp_path / "s1.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="not a valid safetensors index \\('weight_map' must map each tensor"):
        load_checkpoint_tensors(tmp_path)


def test_weights_are_float_and_finite():
    ok = {"f32": torch.randn(3), "bf16": torch.randn(2).bfloat16(), "f64": torch.tensor([3e38], dtype=torch.float64),
          "empty": torch.zeros(0)}
    check_tensors(ok, "x.safetensors")
    with pytest.raises(ValueError) as e:  # finite in float64, inf in float32, which the adapters compute in
        check_tensors({**ok, "f64": torch.tensor([1.0, 1e300], dtype=torch.float64)}, "x.safetensors")
    assert str(e.value) == "x.safetensors: tensor 'f64' holds 1 non-finite value(s) (the first: 1e+300)"
    for value, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            bad = torch.ones(2, 3, dtype=dtype)
            bad[1, 2] = value
            with pytest.raises(ValueError) as e:
                check_tensors({**ok, "w": bad}, "x.safetensors")
            assert str(e.value) == f"x.safetensors: tensor 'w' holds 1 non-finite value(s) (the first: {shown})"
    for dtype in (torch.int64, torch.int8, torch.uint8, torch.bool):
        with pytest.raises(ValueError) as e:
            check_tensors({**ok, "i": torch.zeros(2, dtype=dtype)}, "x.safetensors")
        assert str(e.value) == f"x.safetensors: tensor 'i' has dtype {dtype}, expected floating point"
