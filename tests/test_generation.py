"""Generation through memory: HF generate on the last segment equals decoding by hand with full
forward passes, across segment boundaries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from armt import ARMTForCausalLM


def decode_by_hand(model, ids, steps):
    """Greedy decoding with a full forward pass over the whole text at every step."""
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("use_sink", [False, True])
@pytest.mark.parametrize("context", [13, 16])  # a partial last segment, and an exactly full one
@pytest.mark.parametrize("sliding_window", [False, True])
def test_greedy_equals_full_forward_decoding(tiny_armt, family, use_sink, context, sliding_window):
    # segment 8: 20 new tokens cross 2-3 boundaries (and decode with 1-2 different windows)
    model = tiny_armt(family, use_sink=use_sink, sliding_window=sliding_window)
    ids = torch.randint(99, (2, context), generator=torch.Generator().manual_seed(1))
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, decode_by_hand(model, ids, 20))


def test_without_writing_the_last_segment_grows(tiny_armt):
    model = tiny_armt("llama")
    ids = torch.randint(99, (1, 13), generator=torch.Generator().manual_seed(2))
    written = model.generate(ids, max_new_tokens=12, do_sample=False)
    grown = model.generate(ids, max_new_tokens=12, do_sample=False, write_segments=False)
    assert grown.shape == written.shape == (1, 25)
    # identical until the open segment (13 -> 16 tokens) is full and the next token is predicted
    assert torch.equal(grown[:, :17], written[:, :17])
    # the official behaviour: after the first segment, one ever-growing segment reading its memory
    memory = model(ids[:, :8]).memory
    # the same weights under segment_size=100: a second wrapper around the same base
    grown_model = ARMTForCausalLM(model.base_model, replace(model.config, segment_size=100))
    grown_model.cell.load_armt_state_dict(model.cell.armt_state_dict(), "the first wrapper")
    model = grown_model
    tail = ids[:, 8:]
    with torch.no_grad():
        for _ in range(12):
            tail = torch.cat([tail, model(tail, memory=memory).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(grown[:, 8:], tail)


def test_return_memory_counts_written_segments(tiny_armt):
    model = tiny_armt("gpt2")
    ids = torch.randint(99, (1, 13))
    _, memory = model.generate(ids, max_new_tokens=20, do_sample=False, return_memory=True)
    # 33 tokens: [0,8) [8,16) [16,24) are written; [24,32) is still open when the 33rd is decoded
    assert memory.segments == 3
    full = model(decode_by_hand(model, ids, 20)[:, :24])
    assert all(torch.allclose(a.A, b.A) for a, b in zip(memory.layers, full.memory.layers))


def test_sampling_is_reproducible_and_respects_kwargs(tiny_armt):
    model = tiny_armt("llama")
    ids = torch.randint(99, (2, 10))
    torch.manual_seed(5)
    a = model.generate(ids, max_new_tokens=15, do_sample=True, top_p=0.9, temperature=0.8,
                       repetition_penalty=1.3)
    torch.manual_seed(5)
    b = model.generate(ids, max_new_tokens=15, do_sample=True, top_p=0.9, temperature=0.8,
                       repetition_penalty=1.3)
    assert torch.equal(a, b) and a.shape == (2, 25)


def test_streamer_sees_prompt_once_and_every_new_token_once(tiny_armt):
    class Collect:
        def __init__(self):
            self.puts, self.ends = [], 0

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ends += 1

    model = tiny_armt("gpt2")
    ids = torch.randint(99, (1, 13))
    streamer = Collect()
    out = model.generate(ids, max_new_tokens=20, do_sample=False, streamer=streamer)
    assert torch.equal(streamer.puts[0], ids)
    assert torch.cat([p.reshape(-1) for p in streamer.puts[1:]]).tolist() == out[0, 13:].tolist()
    assert streamer.ends == 1


def test_end_of_sequence_stops_and_pads_finished_rows(tiny_armt):
    model = tiny_armt("llama")
    ids = torch.randint(99, (2, 13), generator=torch.Generator().manual_seed(3))
    free = model.generate(ids, max_new_tokens=20, do_sample=False)
    eos = int(free[0, 13 + 5])  # row 0 emits this token as its 6th new one
    out = model.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0)
    first = (free[0, 13:] == eos).nonzero()[0].item()
    assert torch.equal(out[0, :13 + first + 1], free[0, :13 + first + 1])
    assert (out[0, 13 + first + 1:] == 0).all()
    row1 = (free[1, 13:] == eos).nonzero()
    stop1 = row1[0].item() if len(row1) else 20
    assert torch.equal(out[1, :13 + stop1 + 1], free[1, :13 + stop1 + 1])


@pytest.mark.parametrize("sliding_window", [False, True])
def test_generate_after_reading_equals_generate_over_the_whole_text(tiny_armt, sliding_window):
    model = tiny_armt("gpt2", sliding_window=sliding_window)
    book = torch.randint(99, (1, 24))  # three full segments
    question = torch.randint(99, (1, 5))
    memory = model.read(book.split(5, dim=1)).memory
    answer = model.generate(question, memory=memory, max_new_tokens=12, do_sample=False)
    whole = model.generate(torch.cat([book, question], 1), max_new_tokens=12, do_sample=False)
    assert torch.equal(answer, whole[:, 24:])


def test_bad_generate_arguments(tiny_armt):
    model = tiny_armt("gpt2")
    ids = torch.randint(99, (1, 5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_length"):
        model.generate(ids, max_new_tokens=3, max_length=10)
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(ids[0], max_new_tokens=3)


def test_generation_defaults_decide_eos_and_pad_in_one_place(tiny_armt):
    from transformers import GenerationConfig

    from armt.generation import generation_defaults

    class Tok:
        eos_token_id, pad_token_id = 5, None

    model = tiny_armt("gpt2")
    model.cell.runner.generation_config = GenerationConfig(eos_token_id=[7, 3], pad_token_id=None)
    assert generation_defaults(Tok()) == {"eos_token_id": 5, "pad_token_id": 5}
    assert generation_defaults(model=model) == {"eos_token_id": [7, 3], "pad_token_id": 3}
    assert generation_defaults(Tok(), model) == {"eos_token_id": 5, "pad_token_id": 5}  # the tokenizer wins
    assert generation_defaults(Tok(), model, {"eos_token_id": 9}) == {"eos_token_id": 9, "pad_token_id": 9}
    assert generation_defaults() == {}
