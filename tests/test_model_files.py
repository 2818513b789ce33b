"""Transformer.save files carry a sha256 of their payload: damage of any kind is a ValueError naming the file."""

from __future__ import annotations

import pytest
import torch

from posenc import Transformer, TransformerConfig


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(kind="decoder", vocab_size=50, dim=32, n_heads=4))
    path = tmp_path / "model.pt"
    model.save(path)
    return model, path


def _weight_offset(model, data: bytes) -> int:
    """Where the raw bytes of the largest weight sit in the file (torch.save stores tensors uncompressed)."""
    weight = max(model.state_dict().values(), key=lambda t: t.numel())
    offset = data.find(weight.contiguous().numpy().tobytes())
    assert offset > 0
    return offset


def test_flipped_bytes_inside_a_weight_are_detected(saved):
    model, path = saved
    data = bytearray(path.read_bytes())
    start = _weight_offset(model, bytes(data)) + 16
    for i in range(start, start + 64):  # 64 flipped bytes inside the tensor data: a valid zip, wrong weights
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path.name}.*sha256"):
        Transformer.load(path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "header", "one_byte"])
def test_damaged_files_are_a_value_error_naming_the_file(saved, damage):
    _, path = saved
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello, I am a text file\n",
               "header": b"x" + data[1:], "one_byte": data[:-1]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=path.name):
        Transformer.load(path)


def test_a_folder_or_missing_file(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        Transformer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Transformer.load(tmp_path / "absent.pt")


def test_an_intact_file_loads_the_same_weights(saved):
    model, path = saved
    loaded = Transformer.load(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_file_from_before_checksums_still_loads(saved, tmp_path):
    """A bare torch.save zip (what Transformer.save wrote before it added the sha256) is read unchecked."""
    import dataclasses

    model, _ = saved
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": "posenc.Transformer/1", "config": dataclasses.asdict(model.cfg),
                "state_dict": model.state_dict()}, legacy)
    loaded = Transformer.load(legacy)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
