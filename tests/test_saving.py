"""save_pretrained / from_pretrained, full-model saving, push_to_hub, PEFT adapters."""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers
from safetensors import safe_open

import armt
from armt.saving import CONFIG_NAME, WEIGHTS_NAME


def same_logits(a, b, ids):
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)


def test_round_trip_holds_only_armt_weights(tiny_base, tiny_armt, tmp_path):
    model = tiny_armt("llama", use_sink=True)
    ids = torch.randint(99, (1, 20))
    model.save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / WEIGHTS_NAME), "pt") as f:
        names = set(f.keys())
    base_names = set(tiny_base("llama").state_dict())
    assert "memory_tokens" in names and "sink" in names and not names & base_names
    assert all(n in ("memory_tokens", "sink") or n.startswith("memory_layers.") for n in names)
    assert not (tmp_path / "m" / "model.safetensors").exists()
    restored = armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=tiny_base("llama", dtype=torch.float64))
    same_logits(restored.eval(), model, ids)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m", overwrite=True)


def test_run_options_change_on_loading_and_nothing_else(tiny_base, tiny_armt, tmp_path):
    model = tiny_armt("llama")
    model.save_pretrained(tmp_path / "m")
    base = tiny_base("llama", dtype=torch.float64)
    restored = armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=base,
                                                    options={"bptt_segments": 3, "last_segment_loss_only": True})
    assert restored.config.bptt_segments == 3 and restored.config.last_segment_loss_only
    assert restored.config.segment_size == model.config.segment_size
    same_logits(restored.eval(), model, torch.randint(99, (1, 20)))
    with pytest.raises(ValueError, match="segment_size is not a run-time option"):
        armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=base, options={"segment_size": 4})


def test_another_base_is_refused_naming_the_expected_one(tiny_base, tiny_armt, tmp_path):
    tiny_armt("llama").save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="saved for a different base model \\(LlamaForCausalLM"):
        armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=tiny_base("gpt2"))
    # same class and shapes the memory sees, different architecture (MLP width): the config hash
    cfg = tiny_base("llama").config
    cfg.intermediate_size = 48
    other = transformers.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match="config_hash"):
        armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=other)
    armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=other, check_base=False)
    # run-time settings (attention implementation, dtype) do not count as another base
    armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=tiny_base("llama", attn="eager"))


def test_full_model_in_one_directory(tiny_armt, tmp_path):
    model = tiny_armt("gpt2", dtype=torch.float32)
    with torch.no_grad():  # a fine-tuned base: it must come back too
        model.base_model.lm_head.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "full", save_base=True)
    assert (tmp_path / "full" / "model.safetensors").exists()
    restored = armt.ARMTForCausalLM.from_pretrained(tmp_path / "full")
    same_logits(restored.eval(), model.eval(), torch.randint(99, (1, 20)))


def test_push_to_hub_uploads_the_saved_directory(tiny_base, tiny_armt, tmp_path):
    class LocalHub:
        """Stands in for huggingface_hub.HfApi: a 'repository' is a local folder."""

        def create_repo(self, repo_id, private=None, exist_ok=False):
            (tmp_path / "hub" / repo_id).mkdir(parents=True, exist_ok=exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            shutil.copytree(folder_path, tmp_path / "hub" / repo_id, dirs_exist_ok=True)
            return f"local://{repo_id}"

    model = tiny_armt("gpt2")
    assert model.push_to_hub("me/armt-tiny", api=LocalHub()) == "local://me/armt-tiny"
    assert (tmp_path / "hub" / "me/armt-tiny" / CONFIG_NAME).exists()
    restored = armt.ARMTForCausalLM.from_pretrained(tmp_path / "hub" / "me/armt-tiny",
                                                    base_model=tiny_base("gpt2", dtype=torch.float64))
    same_logits(restored.eval(), model, torch.randint(99, (1, 20)))


def test_lora_and_armt_train_and_round_trip(tiny_base, tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_base("llama")
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    model = armt.ARMTForCausalLM(lora, armt.ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("cell.base_model.") for n in trainable)
    assert any("lora_" in n for n in trainable) and "cell.memory_tokens" in trainable
    assert model.freeze_base() == sum(p.numel() for n, p in model.named_parameters() if n in trainable)

    ids = torch.randint(99, (2, 24))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert lora_b.abs().sum() > 0  # LoRA B starts at zero: it trained

    model.eval().save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / WEIGHTS_NAME), "pt") as f:
        assert not any("lora" in n for n in f.keys())
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").exists()
    restored = armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=tiny_base("llama")).eval()
    same_logits(restored, model, ids)
    with pytest.raises(ValueError, match="merge the adapters"):
        model.save_pretrained(tmp_path / "full", save_base=True)


def test_freeze_base_leaves_only_memory_trainable(tiny_armt):
    model = tiny_armt("gpt2")
    n = model.freeze_base()
    names = {k for k, p in model.named_parameters() if p.requires_grad}
    assert names and not any(k.startswith("cell.base_model.") for k in names)
    assert n == sum(p.numel() for k, p in model.named_parameters() if k in names)
