"""Parity with the official ARMT code on the dumps in ../shared/reference, and the converter."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import armt
from armt.official import convert_official_state_dict, load_official_checkpoint


@pytest.fixture
def official_base(official_base_config):
    """``official_base(kind, reference_dir)``: a random base model of a reference dump's config."""

    def make(kind, reference_dir):
        torch.manual_seed(123)  # any seed: every weight comes from the checkpoint
        return transformers.AutoModelForCausalLM.from_config(official_base_config(reference_dir, kind))

    return make


def _trace(model):
    """Record, per segment and layer, what the official dumps call pre_read, post_read and block_out."""
    rec = {}
    handles = []
    path, layers = armt.find_decoder_layers(model.base_model)

    def hidden(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    for i, layer in enumerate(layers):
        def pre(mod, args, kwargs, i=i):
            rec.setdefault(("pre_read", i), []).append(hidden(args, kwargs).detach().clone())
        def post(mod, args, kwargs, i=i):
            rec.setdefault(("post_read", i), []).append(hidden(args, kwargs).detach().clone())
        # ARMT's read hook exists only while a segment runs and comes after any hook registered
        # now: the layer's first norm sees the hidden states after the read
        first_norm = getattr(layer, "ln_1", None) or layer.input_layernorm
        def out(mod, args, kwargs, output, i=i):
            o = output[0] if isinstance(output, tuple) else output
            rec.setdefault(("block_out", i), []).append(o.detach().clone())
        handles += [layer.register_forward_pre_hook(pre, with_kwargs=True, prepend=True),
                    first_norm.register_forward_pre_hook(post, with_kwargs=True),
                    layer.register_forward_hook(out, with_kwargs=True)]
    return rec, handles


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_matches_official_outputs(official_base, kind, reference_dir):
    meta = json.loads((reference_dir / f"{kind}_meta.json").read_text())
    io = load_file(reference_dir / f"{kind}_io.safetensors")
    official = load_file(reference_dir / f"{kind}_state_dict.safetensors")
    model = load_official_checkpoint(official_base(kind, reference_dir), official,
                                     armt.ARMTConfig(segment_size=meta["armt"]["segment_size"]))
    model.eval()
    cfg = model.config
    assert (cfg.num_mem_tokens, cfg.d_mem, cfg.n_heads, cfg.layers_path) == (
        meta["armt"]["num_mem_tokens"], meta["armt"]["d_mem"], 1, meta["armt"]["layers_attr"])

    rec, handles = _trace(model)
    out = model(io["input_ids"], attention_mask=io["attention_mask"], labels=io["labels"],
                labels_mask=io["labels_mask"].bool())
    for h in handles:
        h.remove()

    assert (out.logits - io["logits"]).abs().max() <= 1e-4
    assert out.loss.item() == pytest.approx(meta["loss"], abs=1e-5)
    torch.testing.assert_close(out.segment_losses, torch.tensor(meta["per_segment_ce_loss"]), rtol=0, atol=1e-5)
    for i, layer in enumerate(out.memory.layers):
        torch.testing.assert_close(layer.A, io[f"state.layer{i}.W_mem"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.z, io[f"state.layer{i}.z"], rtol=1e-4, atol=1e-5)
    n_seg = len(meta["inputs"]["segments"])
    for what in ("pre_read", "post_read", "block_out"):
        for i in range(4):
            assert len(rec[(what, i)]) == n_seg
            for s in range(n_seg):
                expected = io[f"trace.seg{s}.layer{i}.{what}"]
                assert (rec[(what, i)][s] - expected).abs().max() <= 1e-4, (what, i, s)

    out.loss.backward()
    grads = load_file(reference_dir / f"{kind}_grads.safetensors")
    base_grads, armt_grads, _ = convert_official_state_dict(grads)
    ours = dict(model.base_model.named_parameters())
    ours.update({k: v for k, v in model.cell.named_parameters() if not k.startswith("base_model.")})
    checked = 0
    for name, ref in {**base_grads, **armt_grads}.items():
        if name not in ours:  # the tied lm_head appears once in named_parameters
            continue
        g = ours[name].grad
        rel = ((g - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        assert rel <= 1e-3, (name, rel)
        checked += 1
    assert checked == len(list(model.parameters()))


def test_converter_infers_config_and_rejects_contradictions(official_base, reference_dir):
    meta = json.loads((reference_dir / "gpt2_meta.json").read_text())["armt"]
    M, d_mem = meta["num_mem_tokens"], meta["d_mem"]
    official = load_file(reference_dir / "gpt2_state_dict.safetensors")
    base, armt_sd, info = convert_official_state_dict(official)
    assert info == dict(num_mem_tokens=M, d_mem=d_mem, gating=False, use_sink=False,
                        layers_path="transformer.h", n_heads=1)
    assert "transformer.h.0.attn.c_attn.weight" in base and "memory_layers.3.W_mb.bias" in armt_sd
    assert not any(k.startswith("layers.") for k in armt_sd)
    with pytest.raises(ValueError, match=f"d_mem=48 but the weights say {d_mem}"):
        load_official_checkpoint(official_base("gpt2", reference_dir), official, armt.ARMTConfig(d_mem=48, segment_size=16))
    with pytest.raises(ValueError, match="layers_path='transformer.h' does not exist on LlamaForCausalLM"):
        load_official_checkpoint(official_base("llama", reference_dir), official)
    wide = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=1000))
    with pytest.raises(ValueError, match="do not fit GPT2LMHeadModel"):
        load_official_checkpoint(wide, official)


def test_converter_rejects_foreign_names():
    with pytest.raises(ValueError, match="not from an official ARMT checkpoint"):
        convert_official_state_dict({"encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="lacks ARMT weights \\['memory_layers.0.W_mk.weight'"):
        convert_official_state_dict({"memory_cell.memory": torch.zeros(2, 4),
                                     "memory_cell.model.h.0.W_mq.weight": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="not an ARMT checkpoint"):
        convert_official_state_dict({"memory_cell.model.lm_head.weight": torch.zeros(1)})


@pytest.mark.parametrize("head", ["embed_out.weight", "lm_head.weight"])
def test_gpt_neox_checkpoints_of_either_transformers_naming_load(tiny_armt, head):
    """The official code under transformers 4.x saved GPT-NeoX's head as ``embed_out``;
    transformers 5 calls it ``lm_head``. Both load, into the same logits."""
    import re

    model = tiny_armt("gpt_neox", seed=2)
    path = model.config.layers_path or "gpt_neox.layers"
    sd = {"memory_cell.memory": model.cell.memory_tokens.detach()}
    for name, p in model.base_model.state_dict().items():
        m = re.fullmatch(rf"{re.escape(path)}\.(\d+)\.(.+)", name)
        key = f"{path}.{m[1]}.layer.{m[2]}" if m else (head if name == "lm_head.weight" else name)
        sd[f"memory_cell.model.{key}"] = p
    for name, p in model.cell.armt_state_dict().items():
        if name.startswith("memory_layers."):
            _, i, rest = name.split(".", 2)
            sd[f"memory_cell.model.{path}.{i}.{rest}"] = p
    fresh = type(model.base_model)(model.base_model.config).to(torch.float64)
    loaded = load_official_checkpoint(fresh, sd, armt.ARMTConfig(segment_size=model.config.segment_size))
    ids = torch.randint(99, (1, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.eval()(ids).logits, model(ids).logits)


def _official_folder(folder, kind, reference_dir, **changes):
    """A folder in the layout the official code's ARMTForCausalLM.save_pretrained writes
    (modeling_amt/model.py): config.json with model_type 'armt', the base's config as a dict and
    the official ARMTConfig's fields, and the weights under armt.* (the reference dump's tensors)."""
    from safetensors.torch import save_file

    meta = json.loads((reference_dir / f"{kind}_meta.json").read_text())
    config = {"architectures": ["ARMTForCausalLM"], "model_type": "armt", "transformers_version": "4.53.3",
              "base_model_name": None, "base_model_config": meta["base_config"],
              "num_mem_tokens": meta["armt"]["num_mem_tokens"], "d_mem": meta["armt"]["d_mem"],
              "segment_size": meta["armt"]["segment_size"], "segment_alignment": "left", "sliding_window": False,
              "attend_to_previous_input": False, "use_sink": False, "layers_attr": meta["armt"]["layers_attr"],
              "wrap_pos": False, "correction": True, "n_heads": 1, "use_denom": True, "gating": False,
              "freeze_mem": False, "act_on": False, "max_hop": 4, "act_type": "associative", "act_format": "linear",
              "noisy_halting": False, "constant_depth": False, "time_penalty": 0.0}
    config.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(reference_dir / f"{kind}_state_dict.safetensors")
    # save_pretrained keeps one name per storage: the memory_cell.layers.* aliases go
    state = {f"armt.{k}": v.contiguous() for k, v in state.items() if not k.startswith("memory_cell.layers.")}
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_official_hub_folders_convert_and_match_the_official_outputs(kind, reference_dir, tmp_path):
    from armt.cli import main
    from armt.official import load_official_folder

    meta = json.loads((reference_dir / f"{kind}_meta.json").read_text())
    io = load_file(reference_dir / f"{kind}_io.safetensors")
    folder = _official_folder(tmp_path / "official", kind, reference_dir)
    model = load_official_folder(folder).eval()
    assert (model.config.segment_size, model.config.layers_path) == (meta["armt"]["segment_size"],
                                                                     meta["armt"]["layers_attr"])
    with torch.no_grad():
        out = model(io["input_ids"], attention_mask=io["attention_mask"], labels=io["labels"])
    assert (out.logits - io["logits"]).abs().max() <= 1e-4
    assert out.loss.item() == pytest.approx(meta["loss"], abs=1e-5)
    for i, layer in enumerate(out.memory.layers):
        torch.testing.assert_close(layer.A, io[f"state.layer{i}.W_mem"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.z, io[f"state.layer{i}.z"], rtol=1e-4, atol=1e-5)
    # the command writes an armt folder that loads to the same model
    assert main(["convert-official", str(folder), str(tmp_path / "converted")]) == 0
    again = armt.ARMTForCausalLM.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        assert torch.equal(again(io["input_ids"]).logits, model(io["input_ids"]).logits)


def test_official_folders_that_armt_cannot_reproduce_are_refused(reference_dir, tmp_path, capsys):
    from armt.cli import main
    from armt.official import load_official_folder

    half = json.loads((reference_dir / "gpt2_meta.json").read_text())["armt"]["segment_size"] // 2
    cases = {
        "inner": ({"architectures": ["InnerLoopARMTForCausalLM"]}, "inner-loop"),
        "act": ({"act_on": True}, "act_on=True"),
        "wrap": ({"wrap_pos": True}, "wrap_pos"),
        "unknown": ({"think_tokens": 4}, "think_tokens"),
        "segment": ({"segment_size": half}, None),  # a config the weights do not contradict: converts
        "heads": ({"d_mem": 64}, "d_mem"),
    }
    for name, (changes, message) in cases.items():
        folder = _official_folder(tmp_path / name, "gpt2", reference_dir, **changes)
        if message is None:
            assert load_official_folder(folder).config.segment_size == half
            continue
        with pytest.raises(ValueError, match=message):
            load_official_folder(folder)
    folder = tmp_path / "segment"
    assert main(["convert-official", str(folder), str(tmp_path / "out"), "--segment-size", "32"]) == 2
    assert "--segment-size" in capsys.readouterr().err
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_official_folder(folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_official_folder(tmp_path / "nothing")
