"""The PG19 recipe's data: no loss on the first segments (which pairs are scored), held-out books
that never reach training, not even the tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from armt.data.books import builtin_books
from armt.data.lm import LMWindowDataset, LMWindowsConfig, split_books
from armt.data.tokenizer import train_bpe_tokenizer

S = 8


def test_no_loss_segments_masks_exactly_the_first_segments():
    windows = torch.arange(3 * 4 * S).view(3, 4 * S)
    item = LMWindowDataset(windows, no_loss_tokens=LMWindowsConfig(S, 4, no_loss_segments=2).no_loss_tokens)[1]
    assert (item["labels"][:2 * S] == -100).all()
    assert torch.equal(item["labels"][2 * S:], windows[1, 2 * S:]) and torch.equal(item["input_ids"], windows[1])
    with pytest.raises(ValueError, match="no_loss_segments=2 with num_segments=2"):
        LMWindowsConfig(S, 2, no_loss_segments=2)
    with pytest.raises(TypeError, match="no_loss_segments"):
        LMWindowsConfig(S, 2, no_loss_segments=True)


def test_the_loss_scores_the_pairs_whose_target_is_after_the_first_segment(tiny_armt):
    model = tiny_armt("llama", segment_size=S, sliding_window=True, use_sink=True)
    ids = torch.randint(99, (2, 3 * S), generator=torch.Generator().manual_seed(0))
    labels = LMWindowDataset(ids, no_loss_tokens=S)[0]["labels"].expand(2, -1).clone()
    labels[1] = LMWindowDataset(ids, no_loss_tokens=S)[1]["labels"]
    with torch.no_grad():
        out = model(ids, labels=labels)
    logp = torch.log_softmax(out.logits, dim=-1)
    # targets S .. 3S-1: the pair from the first segment's last token to the second's first is scored
    nll = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(S - 1, 3 * S - 1)]
    assert int(out.num_loss_tokens) == len(nll) == 2 * 2 * S == int(model.count_loss_pairs(labels))
    assert float(out.loss) == pytest.approx(float(sum(nll) / len(nll)), abs=1e-10)
    assert math.isnan(float(out.segment_losses[0])) and not math.isnan(float(out.segment_losses[1]))


def test_windows_of_held_out_books_share_no_book_with_training():
    source = builtin_books(num_books=4, chars_per_book=4000)
    tok = train_bpe_tokenizer((b.text for b in source.books()), vocab_size=300)
    train_titles, eval_titles = split_books(source, [source.titles()[1]])
    assert eval_titles == [source.titles()[1]] and not set(train_titles) & set(eval_titles)
    cfg = LMWindowsConfig(S, 2, no_loss_segments=1)
    train = LMWindowDataset.from_books(source, tok, cfg, books=train_titles)
    held = LMWindowDataset.from_books(source, tok, cfg, books=eval_titles)
    assert held.titles == eval_titles and sorted(train.titles) == train_titles
    assert len(held) and len(train)
    assert "no loss on the first 1 segment(s)" in held.description
    with pytest.raises(ValueError, match="not titles"):
        split_books(source, ["no such book"])


def test_the_run_trains_its_tokenizer_on_the_training_books_only(monkeypatch, tmp_path):
    import armt.data.tokenizer as tokenizer_module
    from armt.training.config import RunConfig
    from armt.training.run import dataset_factory, resolve_tokenizer

    seen = []

    def capture(name, train_texts=None, **kwargs):
        seen.extend(train_texts)
        return train_bpe_tokenizer(seen, vocab_size=300), "captured"

    monkeypatch.setattr(tokenizer_module, "get_tokenizer", capture)
    folder = tmp_path / "books"
    folder.mkdir()
    books = {b.title.split()[0]: b.text for b in builtin_books(num_books=4, chars_per_book=3000).books()}
    for title, text in books.items():
        (folder / f"{title}.txt").write_text(text)
    cfg = RunConfig.from_dict({
        "model": {"tiny": {"family": "llama", "layers": 1, "hidden": 32}},
        "armt": {"segment_size": S, "sliding_window": True, "use_sink": True},
        "data": {"kind": "lm", "num_segments": 2,
                 "options": {"source": str(folder), "held_out_books": 2, "no_loss_segments": 1}},
        "training": {"output_dir": str(tmp_path / "run")},
    })
    tok, _ = resolve_tokenizer(cfg, None)
    train_titles, eval_titles = split_books(list(books), 2)
    assert seen == [books[t] for t in train_titles]
    make = dataset_factory(cfg, None, tok)
    train, held = make(2, "train"), make(2, "eval")
    assert held.dataset.titles == eval_titles and not set(train.dataset.titles) & set(eval_titles)
    assert (held[0]["labels"][:S] == -100).all() and (held[0]["labels"][S:] != -100).all()
