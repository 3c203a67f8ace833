"""ARMTTrainer overrides some private methods of transformers.Trainer (no public hook does the
same job: saving ARMT folders instead of the Trainer's own weight files, loading them back, and
counting exactly the label pairs the model scores). These tests pin each override against the
installed transformers, so that an upgrade which renames a method, changes its parameters or
stops calling it fails here, naming the override, instead of silently skipping armt's code."""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from armt.training.trainer import ARMTTrainer

# override -> why armt needs it
PRIVATE_OVERRIDES = {
    "_save": "checkpoints are armt folders (save_pretrained), not the Trainer's weight files",
    "_load_from_checkpoint": "--resume loads an armt folder into the model",
    "_load_best_model": "load_best_model_at_end loads an armt folder",
    "_get_num_items_in_batch": "the loss is normalised by the label pairs the model scores",
}
PUBLIC_OVERRIDES = ("compute_loss", "training_step", "log", "evaluate")


def _params(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@pytest.mark.parametrize("name", list(PRIVATE_OVERRIDES) + list(PUBLIC_OVERRIDES))
def test_each_override_matches_the_installed_trainer(name):
    why = PRIVATE_OVERRIDES.get(name, "a public hook")
    assert hasattr(Trainer, name), f"transformers.Trainer has no {name} any more; ARMTTrainer.{name} ({why}) is dead"
    ours, theirs = _params(getattr(ARMTTrainer, name)), _params(getattr(Trainer, name))
    assert ours == theirs, (f"ARMTTrainer.{name} ({why}) takes {ours} but transformers.Trainer.{name} now takes "
                            f"{theirs}; update the override")


@pytest.mark.parametrize("name", list(PRIVATE_OVERRIDES))
def test_the_trainer_still_calls_each_private_override(name):
    source = "".join(inspect.getsource(m) for _, m in inspect.getmembers(Trainer, inspect.isfunction)
                     if m.__qualname__.startswith("Trainer."))
    assert f"self.{name}(" in source, (f"transformers.Trainer no longer calls self.{name}(...); ARMTTrainer.{name} "
                                       f"({PRIVATE_OVERRIDES[name]}) would never run")


# attributes of transformers.Trainer that ARMTTrainer reads -> why
TRAINER_ATTRIBUTES = {
    "model_accepts_loss_kwargs": "the write penalty is scaled like the task loss under gradient accumulation",
    "current_gradient_accumulation_steps": "the write penalty is a mean over the accumulated micro-batches",
}


@pytest.mark.parametrize("name", list(TRAINER_ATTRIBUTES))
def test_the_trainer_still_sets_each_attribute_armt_reads(name):
    source = inspect.getsource(Trainer)
    assert f"self.{name} =" in source, (f"transformers.Trainer no longer sets self.{name}; ARMTTrainer reads it "
                                        f"({TRAINER_ATTRIBUTES[name]})")
