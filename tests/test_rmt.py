"""The RMT baseline (``ARMTConfig(memory="tokens")``): read memory before the segment, write
memory after it, the write tokens' final hidden states carried as the next read memory."""

from __future__ import annotations

import pytest
import torch

import armt
from armt import ARMTConfig, ARMTForCausalLM, MemoryState

S, M = 8, 3


@pytest.fixture
def rmt(tiny_base):
    """``rmt(family="gpt2", **options)``: a tiny float64 RMT-baseline model."""

    def make(family="gpt2", **options):
        config = dict(num_mem_tokens=M, segment_size=S, memory="tokens")
        config.update(options)
        return ARMTForCausalLM(tiny_base(family, dtype=torch.float64), ARMTConfig(**config)).double().eval()

    return make


def _ids(L, seed=0, batch=2):
    return torch.randint(99, (batch, L), generator=torch.Generator().manual_seed(seed))


def test_a_segment_is_read_tokens_write_and_the_state_is_the_write_outputs(rmt):
    model = rmt()
    base = model.base_model
    ids = _ids(2 * S)
    with torch.no_grad():
        out = model(ids)
        mem0 = model.cell.memory_tokens.unsqueeze(0).expand(2, -1, -1)
        embeds = base.get_input_embeddings()
        # by hand: segment 1 = [mem0, x1, mem0]; segment 2 = [h1, x2, h1]
        h = base.transformer(inputs_embeds=torch.cat([mem0, embeds(ids[:, :S]), mem0], 1)).last_hidden_state
        logits1 = base.lm_head(h[:, M:M + S])
        h1 = h[:, -M:]
        h = base.transformer(inputs_embeds=torch.cat([h1, embeds(ids[:, S:]), h1], 1)).last_hidden_state
        logits2 = base.lm_head(h[:, M:M + S])
    torch.testing.assert_close(out.logits, torch.cat([logits1, logits2], 1), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.memory.tokens, h[:, -M:], rtol=0, atol=1e-10)
    assert out.memory.segments == 2 and model.cell.memory_layers.__len__() == 0


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_the_state_carries_information_to_later_segments(rmt, family):
    model = rmt(family)
    ids = _ids(3 * S)
    changed = ids.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 99
    with torch.no_grad():
        diff = (model(ids).logits - model(changed).logits).abs()
    assert diff[:, 2 * S:].max() > 1e-6  # segment 3 saw segment 1 only through the memory tokens


@pytest.mark.parametrize("sink", [False, True])
def test_two_calls_equal_one_call(rmt, sink):
    model = rmt("llama", use_sink=sink)
    ids = _ids(3 * S + 5)
    with torch.no_grad():
        whole = model(ids, labels=ids)
        first = model(ids[:, :2 * S])
        second = model(ids[:, 2 * S:], memory=first.memory)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(second.memory.tokens, whole.memory.tokens, rtol=0, atol=1e-10)


def test_gradients_flow_through_the_memory_and_stop_at_bptt_segments(rmt):
    ids = _ids(3 * S)
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]  # only the last segment is scored

    def grad_of_first_tokens(bptt):
        model = rmt(bptt_segments=bptt).train()
        embeds = model.base_model.get_input_embeddings()(ids).detach().requires_grad_(True)
        model(inputs_embeds=embeds, labels=labels).loss.backward()
        return embeds.grad[:, :S].abs().max().item()

    assert grad_of_first_tokens(None) > 0
    assert grad_of_first_tokens(1) == 0


def test_generation_equals_argmax_of_full_forwards(rmt):
    model = rmt("gpt_neox", use_sink=True)
    ids = _ids(S + 5, batch=1)
    got = model.generate(ids, max_new_tokens=2 * S, do_sample=False)
    cur = ids
    with torch.no_grad():
        for _ in range(2 * S):
            cur = torch.cat([cur, model(cur).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, cur)


def test_state_save_load_and_refusals(rmt, tiny_base, tmp_path):
    model = rmt()
    ids = _ids(2 * S)
    with torch.no_grad():
        out = model(ids)
    out.memory.save(tmp_path / "m.safetensors")
    loaded = MemoryState.load(tmp_path / "m.safetensors")
    torch.testing.assert_close(loaded.tokens, out.memory.tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, memory=loaded).logits, model(ids, memory=out.memory).logits)
    with pytest.raises(ValueError, match="memory.tokens"):
        model(ids[:1], memory=out.memory)  # batch size 1 against a state of 2
    armt_model = ARMTForCausalLM(tiny_base("gpt2", dtype=torch.float64), ARMTConfig(num_mem_tokens=M, segment_size=S))
    with pytest.raises(ValueError, match="RMT memory tokens"):
        armt_model.double()(ids, memory=out.memory)
    with pytest.raises(ValueError, match="sliding_window"):
        ARMTConfig(memory="tokens", sliding_window=True)
    with pytest.raises(ValueError, match="memory='bogus'"):
        ARMTConfig(memory="bogus")


def test_save_pretrained_round_trip(rmt, tmp_path):
    model = rmt()
    model.save_pretrained(tmp_path / "rmt")
    again = ARMTForCausalLM.from_pretrained(tmp_path / "rmt", base_model=model.base_model)
    assert again.config.memory == "tokens"
    ids = _ids(2 * S)
    with torch.no_grad():
        torch.testing.assert_close(again.double()(ids).logits, model(ids).logits)
    assert armt.ARMTConfig.from_dict(model.config.to_dict()) == model.config


def test_streaming_equals_one_forward_and_checkpointing_keeps_gradients(rmt):
    model = rmt("llama")
    ids = _ids(5 * S + 3, batch=1)
    with torch.no_grad():
        whole = model(ids)
    result = model.read(ids.split(7, dim=1))
    torch.testing.assert_close(result.memory.tokens, whole.memory.tokens, rtol=0, atol=1e-10)
    grads = []
    for ckpt in (False, True):
        net = rmt("llama", gradient_checkpointing=ckpt).train()
        net(ids, labels=ids).loss.backward()
        grads.append(net.cell.memory_tokens.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)
