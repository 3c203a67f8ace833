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


# second pass: cases a new user and an adversarial tester tried --------------------------------


def _live(model):
    """Random memory weights everywhere, so that every difference shows in the state."""
    with torch.no_grad():
        for p in model.cell.memory_layers.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("alignment", ["right", "center"])
def test_reading_a_stream_refuses_a_model_that_cuts_segments_another_way(tiny_armt, alignment):
    model = _live(tiny_armt("gpt2", segment_alignment=alignment))
    ids = _ids(17, 1)
    with pytest.raises(ValueError, match="segment_alignment='left' to read"):
        model.read(ids)
    # accepted when asked for: then it is the left cut, exactly
    left = tiny_armt("gpt2")
    left.load_state_dict(model.state_dict())
    with torch.no_grad():
        got = model.read(ids, segment_alignment="left").memory.layers[0].A
        assert torch.equal(got, left(ids).memory.layers[0].A)


@pytest.mark.parametrize("value", [150, -5])
def test_labels_outside_the_vocabulary_are_refused(tiny_armt, value):
    labels = torch.full((2, 20), -100)
    labels[:, 3] = value
    with pytest.raises(ValueError, match=f"labels hold {value}, outside the model's vocabulary 0..98"):
        tiny_armt("gpt2")(_ids(), labels=labels)


@pytest.mark.parametrize("bad, match", [([[1, 2, 500]], "from 1 to 500"), ([[1, -1, 3]], "from -1 to 3"),
                                        (torch.ones(1, 9, dtype=torch.bool), "torch.bool")])
def test_reading_refuses_ids_outside_the_vocabulary(tiny_armt, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_armt("gpt2").read(torch.as_tensor(bad))


def test_a_state_of_the_other_memory_kind_is_refused_everywhere(tiny_armt):
    armt_state = tiny_armt("gpt2")(_ids(20, 1)).memory
    rmt = tiny_armt("gpt2", memory="tokens")
    for call in (lambda: rmt(_ids(20, 1), memory=armt_state), lambda: rmt.read(_ids(20, 1), memory=armt_state),
                 lambda: rmt.generate(_ids(10, 1), memory=armt_state, max_new_tokens=2)):
        with pytest.raises(ValueError, match="memory='tokens'"):
            call()
    rmt_state = rmt(_ids(20, 1)).memory
    with pytest.raises(ValueError, match="RMT memory tokens"):
        tiny_armt("gpt2")(_ids(20, 1), memory=rmt_state)


def test_forged_or_misplaced_state_files_get_a_message(tiny_armt, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tiny_armt("gpt2")
    state = model(_ids(20, 1)).memory
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        state.save(tmp_path / "missing" / "s.safetensors")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        state.save(tmp_path)
    state.save(tmp_path / "s.safetensors")
    tensors = load_file(tmp_path / "s.safetensors")
    meta = safe_open(str(tmp_path / "s.safetensors"), "pt").metadata()
    save_file({k: v for k, v in tensors.items() if k != "layer1.A"}, str(tmp_path / "m.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"not a complete memory state .*layer1.A"):
        MemoryState.load(tmp_path / "m.safetensors")
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata={**meta, "segments": "x"})
    with pytest.raises(ValueError, match="broken metadata"):
        MemoryState.load(tmp_path / "b.safetensors")
    save_file({**tensors, "layer0.z": torch.zeros(1, 3, dtype=tensors["layer0.A"].dtype)},
              str(tmp_path / "z.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"memory.layers\[0\].z is .* expected"):
        model(_ids(20, 1), memory=MemoryState.load(tmp_path / "z.safetensors"))


def test_a_state_written_by_another_model_is_refused_unless_asked(tiny_armt, tmp_path):
    a, b = tiny_armt("gpt2", seed=0), tiny_armt("gpt2", seed=1)  # same shapes, other weights
    state = a(_ids(20, 1)).memory
    state.save(tmp_path / "a.safetensors", model=a)
    assert MemoryState.load(tmp_path / "a.safetensors", model=a).segments == state.segments
    # the same model in another dtype is the same model; another seed is not
    from armt.state import _signature_differs

    import copy

    assert _signature_differs(a.signature(), copy.deepcopy(a).to(torch.bfloat16).signature()) == ""
    assert _signature_differs(a.signature(), b.signature()) == "weights"
    with pytest.raises(ValueError, match="written by another model .*weights"):
        MemoryState.load(tmp_path / "a.safetensors", model=b)
    assert MemoryState.load(tmp_path / "a.safetensors", model=b, check_model=False).segments == state.segments
    state.save(tmp_path / "plain.safetensors")  # no model recorded: nothing to compare
    assert MemoryState.load(tmp_path / "plain.safetensors", model=b) is not None


def test_generate_refuses_sampling_settings_out_of_range(tiny_armt):
    model = tiny_armt("gpt2")
    for bad in ({"top_p": 5.0}, {"top_p": 0.0}, {"temperature": 0.0}, {"top_k": -1}, {"repetition_penalty": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            model.generate(_ids(10, 1), do_sample=True, max_new_tokens=2, **bad)


def test_float16_models_keep_their_memory_in_float32(tiny_base):
    model = ARMTForCausalLM(tiny_base("gpt2"), ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8)).half()
    _live(model)
    with torch.no_grad():
        state = model.read(_ids(64, 1)).memory
    assert state.layers[0].A.dtype == torch.float32 and not state.non_finite()
    bf16 = ARMTForCausalLM(tiny_base("gpt2"), ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8)).bfloat16()
    assert bf16.read(_ids(16, 1)).memory.layers[0].A.dtype == torch.bfloat16  # bf16's range suffices


def test_save_pretrained_over_a_saved_base_leaves_no_stale_base(tiny_armt, tmp_path):
    model = tiny_armt("gpt2")
    model.save_pretrained(tmp_path / "m", save_base=True)
    (tmp_path / "m" / "mine.txt").write_text("keep")
    model.save_pretrained(tmp_path / "m", overwrite=True)
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" not in names and "config.json" not in names  # the old base is gone
    assert "mine.txt" in names and not list(tmp_path.glob(".m.saving-*"))
    with pytest.raises(ValueError, match="holds no base model"):
        ARMTForCausalLM.from_pretrained(tmp_path / "m")


def test_a_save_cut_short_refuses_to_load_and_files_get_the_umask_modes(tiny_armt, tmp_path, monkeypatch):
    import armt.saving as saving

    model = tiny_armt("gpt2")
    model.save_pretrained(tmp_path / "m", save_base=True)
    mask = os.umask(0o022)
    os.umask(mask)
    for p in (tmp_path / "m").iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~mask

    def killed(staging, out, files):  # a kill in the middle of replacing the files
        (out / saving.CONFIG_NAME).unlink()
        os.replace(staging / saving.WEIGHTS_NAME, out / saving.WEIGHTS_NAME)
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "_replace_files", killed)
    with pytest.raises(KeyboardInterrupt):
        tiny_armt("gpt2", seed=3).save_pretrained(tmp_path / "m", save_base=True, overwrite=True)
    with pytest.raises(FileNotFoundError, match="a save was cut short"):
        ARMTForCausalLM.from_pretrained(tmp_path / "m")


def test_overwrite_refuses_user_files_deep_inside_a_run(tmp_path):
    run = tmp_path / "run"
    train(_run(run))
    for inner in ("stage1-1seg/notes.txt", "best/mine.txt", "stage1-1seg/best/x.bin"):
        (run / inner).write_text("mine")
        with pytest.raises(ValueError, match=inner.split("/")[-1]):
            train(_run(run), overwrite=True)
        assert (run / inner).exists()
        os.remove(run / inner)
    train(_run(run), overwrite=True)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "mine"
    (folder / "best").mkdir(parents=True)
    (folder / "best" / "model.safetensors").write_text("precious")
    with pytest.raises(FileNotFoundError, match="not an armt run"):
        train(_run(folder), resume=True)
    with pytest.raises(FileNotFoundError, match="holds no run"):
        train(_run(tmp_path / "new"), resume=True)
    assert (folder / "best" / "model.safetensors").read_text() == "precious"


@pytest.mark.parametrize("change, match", [
    ({"data": {"options": {"key_lenn": 1}}}, "key_lenn"),
    ({"training": {"per_device_train_batch_size": 0}}, "per_device_train_batch_size"),
    ({"model": {"tiny": {"family": "bert"}}}, "tiny family"),
    ({"armt": {"segment_size": 100000}}, "segment_size"),
    ({"custom_metrics": ["armt.nothing:here"]}, "armt.nothing"),
    ({"model": {"tiny": {"layers": 0}}}, "model.tiny.layers must be a positive integer"),
    ({"model": {"tiny": {"hidden": -32}}}, "model.tiny.hidden must be a positive integer"),
    ({"data": {"num_segments": 4}}, "data.num_segments is ignored beside a curriculum"),
])
def test_config_errors_leave_nothing_behind(tmp_path, change, match):
    values = _run(tmp_path / "run").to_dict()
    for section, fields in change.items():
        if isinstance(fields, dict):
            for key, value in fields.items():
                target = values[section]
                if isinstance(value, dict):
                    target[key] = {**(target.get(key) or {}), **value}
                else:
                    target[key] = value
        else:
            values[section] = fields
    with pytest.raises((ValueError, ImportError), match=match):
        train(RunConfig.from_dict(values))
    assert not (tmp_path / "run").exists()


def test_resume_falls_back_over_a_checkpoint_with_a_truncated_trainer_state(tmp_path):
    from armt.training.run import _latest_checkpoint

    stage = tmp_path / "stage1-1seg"
    for step in (2, 4):
        ck = stage / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        for name in ("armt_config.json", "armt_model.safetensors"):
            (ck / name).write_text("x")
        (ck / "trainer_state.json").write_text('{"global_step": %d}' % step)
    (stage / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')
    assert _latest_checkpoint(stage) == str(stage / "checkpoint-2")


def test_output_dirs_expand_the_home_and_refuse_files_and_links(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    train(_run("~/runs/a"))
    assert (tmp_path / "runs" / "a" / "best").is_dir() and not os.path.exists("~")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        train(_run(tmp_path / "file"))
    (tmp_path / "link").symlink_to(tmp_path / "runs" / "a")
    with pytest.raises(ValueError, match="symbolic link"):
        train(_run(tmp_path / "link"), overwrite=True)
    assert (tmp_path / "runs" / "a" / "best").is_dir()


@pytest.fixture
def cli_model(tiny_base, tmp_path):
    """A saved llama-family ARMT model with its own small tokenizer, and a text to read."""
    from armt.data.tokenizer import train_bpe_tokenizer

    text = "".join(f"Mary went to the kitchen {i} times. John took the apple.\n" for i in range(60))
    (tmp_path / "book.txt").write_text(text)
    tok = train_bpe_tokenizer([text], vocab_size=300)
    model = ARMTForCausalLM(tiny_base("llama", vocab=len(tok)), ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=32))
    model.save_pretrained(tmp_path / "model", save_base=True)
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model", tmp_path / "book.txt", tok


def _cli(args, capsys):
    from armt.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("extra, match", [
    (["--threads", "0"], "--threads: must be an integer >= 1, got 0"),
    (["--threads", "-1"], "--threads: must be an integer >= 1, got -1"),
    (["--encoding", "nonsense"], "'nonsense' is not a text encoding"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nowhere"], "--device"),
    (["--chunk-chars", "0"], "--chunk-chars: must be an integer >= 1"),
])
def test_read_flags_out_of_range_get_one_line(cli_model, tmp_path, capsys, extra, match):
    model_dir, book, _ = cli_model
    code, text = _cli(["read", "--model", model_dir, "--input", book, "--save-memory", tmp_path / "m.safetensors",
                       "--quiet", *extra], capsys)
    assert code == 2 and match in text and "Traceback" not in text


def test_read_refuses_a_folder_as_memory_file_before_reading(cli_model, tmp_path, capsys):
    model_dir, book, _ = cli_model
    (tmp_path / "dir").mkdir()
    code, text = _cli(["read", "--model", model_dir, "--input", book, "--save-memory", tmp_path / "dir", "--overwrite",
                       "--quiet"], capsys)
    assert code == 2 and "is a folder" in text


def test_read_refuses_a_tokenizer_larger_than_the_vocabulary(cli_model, tiny_base, tmp_path, capsys):
    model_dir, book, tok = cli_model
    small = ARMTForCausalLM(tiny_base("llama", vocab=50), ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=32))
    small.save_pretrained(tmp_path / "small", save_base=True)
    code, text = _cli(["read", "--model", tmp_path / "small", "--tokenizer", model_dir, "--input", book,
                       "--save-memory", tmp_path / "s.safetensors", "--quiet"], capsys)
    assert code == 2 and f"the tokenizer has {len(tok)} tokens but the model's vocabulary has 50" in text


def test_generate_with_another_models_memory_is_refused_unless_asked(cli_model, tiny_base, tmp_path, capsys):
    model_dir, book, tok = cli_model
    assert _cli(["read", "--model", model_dir, "--input", book, "--save-memory", tmp_path / "a.safetensors",
                 "--quiet"], capsys)[0] == 0
    other = ARMTForCausalLM(tiny_base("llama", vocab=len(tok), seed=5),
                            ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=32))
    other.save_pretrained(tmp_path / "other", save_base=True)
    tok.save_pretrained(tmp_path / "other")
    ask = ["generate", "--model", tmp_path / "other", "--memory", tmp_path / "a.safetensors", "--prompt", "Mary",
           "--max-new-tokens", "2"]
    code, text = _cli(ask, capsys)
    assert code == 2 and "written by another model" in text and "--any-model" in text
    assert _cli(ask + ["--any-model"], capsys)[0] == 0
    code, text = _cli(["generate", "--model", model_dir, "--prompt", "Mary", "--do-sample", "--top-p", "5"], capsys)
    assert code == 2 and "--top-p: must be in (0, 1], got 5" in text


def test_converter_and_exporter_errors_get_one_line(tiny_base, tmp_path, capsys):
    tiny_base("gpt2").config.save_pretrained(tmp_path / "cfg")
    ckpt = tmp_path / "ck.pt"
    torch.save({"w": torch.zeros(1000)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])  # truncated
    code, text = _cli(["convert-official", ckpt, tmp_path / "out", "--base", tmp_path / "cfg"], capsys)
    assert code == 2 and "ck.pt" in text and "Traceback" not in text
    torch.save({"w": torch.zeros(3)}, ckpt)
    code, text = _cli(["convert-official", ckpt, tmp_path / "out", "--base", tmp_path / "nonexistent"], capsys)
    assert code == 2 and "nonexistent" in text and "Traceback" not in text
    (tmp_path / "file").write_text("x")
    code, text = _cli(["export-base", tmp_path / "cfg", tmp_path / "file"], capsys)
    assert code == 2 and "is a file" in text


@pytest.mark.parametrize("args, match", [
    (["reading-demo", "--tokens", "-5"], "--tokens: must be an integer >= 1, got -5"),
    (["train", "--armt.segment_size", "abc"], "segment_size must be an int"),
    (["train", "--model.tiny.hidden", "-32"], "model.tiny.hidden must be a positive integer"),
    (["train", "--threads", "-1"], "--threads: must be an integer >= 0"),
    (["train", "--curriculum.7.max_steps", "3"], "curriculum is a list of 3"),
])
def test_command_line_config_errors_get_one_line(tmp_path, capsys, args, match):
    code, text = _cli(args + (["--training.output_dir", tmp_path / "run"] if args[0] == "train" else []), capsys)
    assert code == 2 and match in text and "Traceback" not in text
    assert not (tmp_path / "run").exists()


def test_a_non_finite_training_loss_is_one_line(tmp_path, capsys, monkeypatch):
    from armt.training.trainer import ARMTTrainer

    def explode(self, *args, **kwargs):
        raise FloatingPointError("training loss is nan at step 0: ...")

    monkeypatch.setattr(ARMTTrainer, "compute_loss", explode)
    code, text = _cli(["train", "--training.output_dir", tmp_path / "run", "--training.report_to", "[]",
                       "--curriculum", "[{num_segments: 1, max_steps: 1}]"], capsys)
    assert code == 2 and "error: training loss is nan" in text
