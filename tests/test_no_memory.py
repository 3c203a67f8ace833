"""The no-memory baseline (``ARMTConfig(memory="none")``): the same segmentation, window and
sink as ARMT, but nothing crosses segments except the window."""

from __future__ import annotations

import pytest
import torch

import armt
from armt import ARMTConfig, ARMTForCausalLM, segment_bounds
from armt.tiny import tiny_base_model

S = 8


def _ids(L, seed=0, batch=2):
    return torch.randint(99, (batch, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_without_window_it_is_the_base_model_run_segment_by_segment(tiny_armt, family):
    model = tiny_armt(family, memory="none", segment_size=S)
    base = model.base_model
    ids = _ids(3 * S + 3)
    with torch.no_grad():
        got = model(ids).logits
        want = torch.cat([base(ids[:, a:b]).logits for a, b in segment_bounds(ids.shape[1], S, "left")], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("layers", [1, 2])
def test_with_window_nothing_older_than_the_window_is_seen(family, layers):
    """A layer's token t attends to tokens t - S .. t. The window's keys and values were
    computed in the previous segment, with its own window, so the reach grows by S per layer
    (as for any stacked sliding window): changing token p moves exactly the logits of
    p .. p + layers * S. With memory the change reaches every later segment."""
    ids = _ids(5 * S)
    p = 3
    changed = ids.clone()
    changed[:, p] = (changed[:, p] + 1) % 99

    def moved(use_memory):
        torch.manual_seed(0)
        base = tiny_base_model(family, layers=layers, hidden=32, vocab=99, max_positions=128).double()
        model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=S, sliding_window=True,
                                                 use_sink=True, memory="associative" if use_memory else "none")).eval()
        for mem in model.cell.memory_layers:  # a live memory (W_mv starts at zero)
            torch.nn.init.normal_(mem.W_mv.weight, std=0.2)
        with torch.no_grad():
            diff = (model(ids).logits - model(changed).logits).abs().amax(dim=(0, 2))
        return (diff > 1e-9).tolist()

    reach = p + layers * S
    assert moved(False) == [p <= t <= reach for t in range(5 * S)]
    assert all(moved(True)[p:])


def test_no_memory_parameters_and_the_state_carries_only_the_window(tiny_armt):
    model = tiny_armt("llama", memory="none", segment_size=S, sliding_window=True, use_sink=True)
    names = [n for n, _ in model.named_parameters() if not n.startswith("cell.base_model.")]
    assert names == ["cell.sink"]
    assert set(model.cell.armt_state_dict()) == {"sink"}
    assert model.cell.memory_tokens.shape == (0, 32)
    out = model(_ids(2 * S + 3), labels=_ids(2 * S + 3))
    out.loss.backward()
    assert model.cell.sink.grad is not None
    assert out.memory.segments == 3 and out.memory.window_length == 3
    assert all(m.A.shape == (2, 0) and m.z is None for m in out.memory.layers)
    # streaming: the returned state continues the sequence exactly
    ids = _ids(4 * S)
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :2 * S])
        second = model(ids[:, 2 * S:], memory=first.memory)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), full, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="A has shape"):
        tiny_armt("llama", segment_size=S, sliding_window=True, use_sink=True)(ids, memory=first.memory)


def test_gradient_checkpointing_and_generation_work_without_memory(tiny_armt):
    model = tiny_armt("llama", memory="none", segment_size=S, sliding_window=True, use_sink=True)
    ids = _ids(3 * S)
    plain = model(ids, labels=ids).loss
    model.gradient_checkpointing_enable()
    torch.testing.assert_close(model(ids, labels=ids).loss, plain)
    out = model.generate(ids[:1, :S + 2], max_new_tokens=2 * S, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 3 * S + 2)


def test_saves_and_loads_like_other_models(tiny_base, tiny_armt, tmp_path):
    model = tiny_armt("llama", memory="none", segment_size=S, sliding_window=True, use_sink=True)
    with torch.no_grad():
        model.cell.sink.add_(1.0)
    model.save_pretrained(tmp_path / "m", save_base=True)
    loaded = ARMTForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64).eval()
    assert loaded.config.use_memory is False and loaded.cell.num_mem_tokens == 0
    ids = _ids(3 * S)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-10)
    # a directory of a model with memory does not load into the baseline
    with_memory = armt.ARMTForCausalLM(tiny_base("llama", dtype=torch.float64),
                                       ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=S))
    with_memory.save_pretrained(tmp_path / "w")
    with pytest.raises(ValueError, match="does not fit"):
        model.cell.load_armt_state_dict(with_memory.cell.armt_state_dict(), "w")


def test_selectable_from_the_run_config():
    from armt.training.config import RunConfig
    from armt.training.run import build_model

    cfg = RunConfig.from_dict({
        "model": {"tiny": {"family": "llama", "layers": 2, "hidden": 32, "vocab": 64}},
        "armt": {"segment_size": 16, "sliding_window": True, "use_sink": True, "memory": "none"},
        "training": {"output_dir": "unused"},
    })
    model = build_model(cfg)
    assert model.config.use_memory is False and len(model.cell.memory_layers) == 0


def test_configs_saved_with_use_memory_still_load():
    """``use_memory: false`` was the switch before ``memory: none``; saved configs and run configs
    that spell it so load as the no-memory baseline."""
    from armt.training.config import RunConfig

    assert ARMTConfig.from_dict({"segment_size": 16, "use_memory": False}).memory == "none"
    assert ARMTConfig.from_dict({"memory": "tokens", "use_memory": False}).memory == "none"
    assert ARMTConfig.from_dict({"use_memory": True}).memory == "associative"
    assert ARMTConfig.from_dict({"memory": "none"}).use_memory is False
    cfg = RunConfig.from_dict({"model": {"tiny": {"family": "llama", "layers": 2, "hidden": 32, "vocab": 64}},
                               "armt": {"segment_size": 16, "use_memory": False}, "training": {"output_dir": "x"}})
    assert cfg.armt.memory == "none"
    with pytest.raises(TypeError, match="use_memory"):
        ARMTConfig.from_dict({"use_memory": "no"})
    with pytest.raises(ValueError, match="contradicts"):
        ARMTConfig.from_dict({"use_memory": True, "memory": "none"})
    with pytest.raises(TypeError):  # not a constructor argument any more: one switch
        ARMTConfig(use_memory=False)


@pytest.mark.parametrize("use_memory", [True, False])
def test_models_saved_before_memory_none_load(tmp_path, tiny_armt, use_memory):
    """A saved model's armt_config.json from before ``memory: none`` spells the switch
    ``use_memory``; such a folder loads as the model it was."""
    import json

    model = tiny_armt("llama", segment_size=S, memory="associative" if use_memory else "none")
    model.save_pretrained(tmp_path / "m", save_base=True)
    path = tmp_path / "m" / "armt_config.json"
    record = json.loads(path.read_text())
    record["armt"]["use_memory"] = use_memory
    record["armt"]["memory"] = "associative"  # what the earlier version wrote for either
    path.write_text(json.dumps(record))
    loaded = ARMTForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config.memory == ("associative" if use_memory else "none")
    ids = torch.randint(99, (1, 3 * S))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
