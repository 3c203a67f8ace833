"""Bad input gets a message, never silently wrong numbers, and nothing a user owns is deleted."""

from __future__ import annotations

import os

import pytest
import torch

from armt import ARMTConfig, ARMTForCausalLM, MemoryState
from armt.training.config import RunConfig
from armt.training.run import train

S = 8


def _ids(L=20, batch=2):
    return torch.randint(99, (batch, L), generator=torch.Generator().manual_seed(0))


def test_labels_that_are_all_ignored_give_zero_loss_not_nan(tiny_armt):
    model = tiny_armt("gpt2").train()
    out = model(_ids(), labels=torch.full((2, 20), -100))
    assert float(out.loss.detach()) == 0.0 and int(out.num_loss_tokens) == 0
    out.loss.backward()  # still a graph


@pytest.mark.parametrize("bad, match", [(torch.full((1, 5), 99), "vocabulary is 0..98"),
                                        (torch.full((1, 5), -1), "vocabulary"),
                                        (torch.ones(1, 5, dtype=torch.bool), "bool")])
def test_token_ids_out_of_range_are_refused(tiny_armt, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_armt("gpt2")(bad)


def test_segments_beyond_the_position_table_are_refused_at_construction(tiny_base):
    base = tiny_base("gpt2")  # n_positions=512
    with pytest.raises(ValueError, match="segment_size <= 508"):
        ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, segment_size=600))
    ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, segment_size=508))


def test_a_state_of_another_dtype_is_refused_with_the_fix(tiny_armt):
    model = tiny_armt("gpt2", dtype=torch.float32).float()
    with torch.no_grad():
        state = model(_ids()).memory
    with pytest.raises(ValueError, match="memory.to"):
        model(_ids(), memory=state.to(torch.float64))


@pytest.mark.parametrize("option", [{"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}])
def test_generate_refuses_beams_and_several_sequences(tiny_armt, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        tiny_armt("gpt2").generate(_ids(10, 1), max_new_tokens=3, **option)


def test_non_finite_states_are_never_saved_or_loaded(tiny_armt, tmp_path):
    model = tiny_armt("gpt2")
    with torch.no_grad():
        state = model(_ids()).memory
    broken = state._map(lambda t: t * float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        broken.save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in broken.tensors().items()}
    save_file(tensors, str(tmp_path / "forged.safetensors"), metadata={"format": "armt.memory_state.v1",
                                                                          "segments": "3", "num_layers": "2"})
    with pytest.raises(ValueError, match="NaN or infinite"):
        MemoryState.load(tmp_path / "forged.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="cut.safetensors.*not a readable safetensors"):
        MemoryState.load(tmp_path / "cut.safetensors")


def test_saving_into_a_hugging_face_model_folder_needs_overwrite(tiny_armt, tmp_path):
    model = tiny_armt("gpt2")
    victim = tmp_path / "victim"
    model.base_model.save_pretrained(victim)
    before = (victim / "config.json").read_text()
    with pytest.raises(FileExistsError, match="not empty"):
        model.save_pretrained(victim, save_base=True)
    assert (victim / "config.json").read_text() == before
    model.save_pretrained(victim, save_base=True, overwrite=True)


def _run(out, **training):
    return RunConfig.from_dict({
        "model": {"tiny": {"family": "gpt2", "layers": 1, "hidden": 32, "vocab": 32}},
        "armt": {"num_mem_tokens": 2, "d_mem": 8, "segment_size": 12},
        "data": {"kind": "associative_retrieval", "num_train": 16, "num_eval": 4, "options": {"key_len": 1}},
        "curriculum": [{"num_segments": 1, "max_steps": 1}],
        "training": {"output_dir": str(out), "report_to": [], "use_cpu": True, "per_device_train_batch_size": 4,
                     "disable_tqdm": True, **training},
    })


def test_overwrite_never_deletes_the_working_directory_or_foreign_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(ValueError, match="working directory"):
        train(_run("."), overwrite=True)
    with pytest.raises(ValueError, match="working directory"):
        train(_run(".."), overwrite=True)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an armt run"):
        train(_run(folder))
    with pytest.raises(ValueError, match="not an armt run"):
        train(_run(folder), overwrite=True)
    assert (tmp_path / "precious.txt").exists() and (folder / "a.txt").exists()
    run = tmp_path / "run"
    train(_run(run))
    (run / "notes.txt").write_text("mine too")
    with pytest.raises(ValueError, match="notes.txt"):
        train(_run(run), overwrite=True)
    os.remove(run / "notes.txt")
    train(_run(run), overwrite=True)  # a run of its own is replaced


def test_a_bad_config_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(ValueError, match="training.learning_rate must be a number"):
        _run(tmp_path / "x", learning_rate="abc")
    with pytest.raises(ValueError, match="training.use_cpu must be true or false"):
        _run(tmp_path / "x", use_cpu="yes")
    assert not (tmp_path / "x").exists()


def test_resume_after_a_finished_stage_trains_no_extra_step(tmp_path):
    import json
    import shutil

    cfg = _run(tmp_path / "r", save_steps=2, eval_strategy="no")
    cfg.curriculum[0].max_steps = 4
    train(cfg)
    out = tmp_path / "r"
    # a kill after the stage's last checkpoint but before its result was recorded
    (out / "curriculum_state.json").write_text(json.dumps({"finished": []}))
    shutil.rmtree(out / "stage1-1seg" / "best")
    [result] = train(cfg, resume=True)
    assert result.steps == 4
    assert sorted(p.name for p in (out / "stage1-1seg").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path, caplog):
    import json

    cfg = _run(tmp_path / "k", save_steps=2, eval_strategy="no")
    cfg.curriculum[0].max_steps = 4
    train(cfg)
    out = tmp_path / "k"
    (out / "curriculum_state.json").write_text(json.dumps({"finished": []}))
    (out / "stage1-1seg" / "checkpoint-4" / "armt_model.safetensors").unlink()  # killed while writing
    [result] = train(cfg, resume=True)
    assert result.steps == 4
    assert "incomplete checkpoint" in caplog.text


def test_resume_with_another_config_names_the_keys(tmp_path):
    train(_run(tmp_path / "c"))
    with pytest.raises(ValueError, match="training.learning_rate"):
        train(_run(tmp_path / "c", learning_rate=0.5), resume=True)


def test_config_files_and_options_errors_name_the_problem(tmp_path):
    from armt.training.config import load_run_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {tiny: {family: gpt2}\ntraining: [\n")
    with pytest.raises(ValueError, match="not valid YAML at line"):
        load_run_config(bad)
    cfg = _run(tmp_path / "o")
    cfg.data.options["keylen"] = 2
    with pytest.raises(ValueError, match="data.options.keylen"):
        train(cfg)


def test_convert_official_refuses_pickles_and_non_empty_targets(tiny_base, tmp_path, capsys):
    import pickle

    from armt.cli import main

    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    cfg_dir = tmp_path / "cfg"
    tiny_base("gpt2").config.save_pretrained(cfg_dir)
    assert main(["convert-official", str(evil), str(tmp_path / "new"), "--base", str(cfg_dir)]) == 2
    assert "opened safely" in capsys.readouterr().err
    victim = tmp_path / "victim"
    tiny_base("gpt2").save_pretrained(victim)
    assert main(["convert-official", str(evil), str(victim), "--base", str(cfg_dir)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_read_checks_the_output_folder_before_reading(tiny_armt, tmp_path, capsys):
    from armt.cli import main

    model = tiny_armt("gpt2")
    model.save_pretrained(tmp_path / "m", save_base=True)
    text = tmp_path / "t.txt"
    text.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert main(["read", "--model", str(tmp_path / "m"), "--input", str(text), "--save-memory",
                 str(tmp_path / "nodir" / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_saved_base_path_is_absolute_and_meta_models_are_refused(tiny_base, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    tiny_base("gpt2").save_pretrained("base")
    from transformers import AutoModelForCausalLM

    model = ARMTForCausalLM(AutoModelForCausalLM.from_pretrained("base"), ARMTConfig(num_mem_tokens=2, segment_size=8))
    model.save_pretrained("armt")
    record = json.loads((tmp_path / "armt" / "armt_config.json").read_text())
    assert record["base"]["name_or_path"] == str(tmp_path / "base")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(tiny_base("gpt2").config)
    with pytest.raises(ValueError, match="meta device"):
        ARMTForCausalLM(meta, ARMTConfig(num_mem_tokens=2, segment_size=8))
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        ARMTForCausalLM.from_pretrained("armt", base_model=str(tmp_path / "missing-base"))


def test_data_parallel_replicas_are_refused_with_the_fix(tiny_armt):
    model = tiny_armt("gpt2")
    # what torch.nn.parallel.replicate marks on each copy (it needs GPUs to run for real)
    model._is_replica = True
    with pytest.raises(RuntimeError, match="DistributedDataParallel"):
        model(torch.randint(50, (1, 12)))
    model._is_replica = False
    assert model(torch.randint(50, (1, 12))).logits.shape[:2] == (1, 12)
