"""Streaming: reading chunks of any size equals one forward pass; states save and continue."""

from __future__ import annotations

import pytest
import torch

import armt
from armt.streaming import MemoryReader, iter_text_tokens


def assert_same_state(a, b, tol=1e-12):
    assert a.segments == b.segments
    for x, y in zip(a.layers, b.layers):
        assert (x.A - y.A).abs().max() <= tol and (x.z - y.z).abs().max() <= tol


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_chunks_of_any_size_equal_one_forward(tiny_armt, family):
    model = tiny_armt(family)
    ids = torch.randint(99, (2, 75), generator=torch.Generator().manual_seed(0))
    full = model(ids, labels=ids)
    for sizes in ([75], [1] * 75, [5, 30, 2, 38], [8, 8, 59]):
        r = model.read(ids.split(sizes, dim=1), compute_loss=True, keep_last_logits=True)
        assert r.tokens == 75 and r.pending.shape == (2, 0)
        assert_same_state(r.memory, full.memory)
        assert r.loss == pytest.approx(full.loss.item(), abs=1e-12)
        assert r.loss_count == int(full.num_loss_tokens)
        torch.testing.assert_close(r.segment_losses, full.segment_losses, atol=1e-12, rtol=0)
        torch.testing.assert_close(r.last_logits, full.logits[:, -1], atol=1e-12, rtol=0)


def test_without_loss_no_logits_are_kept(tiny_armt):
    model = tiny_armt("gpt2")
    r = model.read([torch.randint(99, (40,))])
    assert r.loss is None and r.segment_losses is None and r.last_logits is None
    assert r.memory.segments == 5


def test_open_segment_is_pending_and_continues_exactly(tiny_armt, tmp_path):
    model = tiny_armt("llama")
    ids = torch.randint(99, (1, 61))
    once = model.read([ids]).memory
    first = model.read([ids[:, :30]], flush=False)
    assert first.tokens == 24 and first.pending.shape == (1, 6)
    first.memory.save(tmp_path / "mem.safetensors")
    memory = armt.MemoryState.load(tmp_path / "mem.safetensors")
    rest = model.read([first.pending, ids[:, 30:]], memory=memory)
    assert_same_state(rest.memory, once)


def test_reader_errors(tiny_armt):
    model = tiny_armt("gpt2")
    reader = MemoryReader(model)
    reader.feed(torch.randint(99, (2, 3)))
    with pytest.raises(ValueError, match="batch size 1"):
        reader.feed(torch.randint(99, (1, 3)))
    with pytest.raises(ValueError, match="token ids"):
        MemoryReader(model).feed(torch.randn(3))
    other = tiny_armt("gpt2", d_mem=16).read([torch.randint(99, (1, 9))]).memory
    with pytest.raises(ValueError, match="another config"):
        model.read([torch.randint(99, (1, 9))], memory=other)


def test_text_file_tokens_equal_whole_file(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [f"Line {i}: the quick brown fox number {i * 7} jumps over the lazy dog." for i in range(300)]
    text = "\n".join(lines) + "\n"
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    path = tmp_path / "book.txt"
    path.write_text(text)
    chunks = list(iter_text_tokens(path, tok, chunk_chars=500))
    assert len(chunks) > 10
    assert [t for c in chunks for t in c] == tok(text, add_special_tokens=False)["input_ids"]
