import pytest
import torch

from armt import MemoryState


def test_save_load_round_trip_continues_identically(tiny_armt, tmp_path):
    model = tiny_armt("gpt2")
    ids = torch.randint(99, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = model(ids[:, :16]).memory
        path = tmp_path / "mem.safetensors"
        state.save(path)
        loaded = MemoryState.load(path)
        assert loaded.segments == state.segments == 2
        a = model(ids[:, 16:], memory=state)
        b = model(ids[:, 16:], memory=loaded)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        state.save(path)
    state.save(path, overwrite=True)


def test_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not an ARMT memory state"):
        MemoryState.load(path)


def test_select_and_detach(tiny_armt):
    model = tiny_armt("gpt2")
    ids = torch.randint(99, (3, 10))
    out = model(ids, labels=ids)
    state = out.memory
    assert state.layers[0].A.requires_grad and not state.detach().layers[0].A.requires_grad
    assert state.select([2, 0]).batch_size == 2
