"""The segment engine: iter_segments / run_segment give what the model's forward pass gives."""

import torch

from armt.segments import iter_segments, run_segment, segment_bounds


def test_iter_segments_equals_the_forward_pass(tiny_armt):
    model = tiny_armt("llama", segment_size=6)
    ids = torch.randint(99, (2, 20), generator=torch.Generator().manual_seed(3))
    table = model.base_model.get_input_embeddings()
    bounds = segment_bounds(20, 6, "left")
    with torch.no_grad():
        out = model(ids)
        steps = list(iter_segments(model.cell, lambda a, b: table(ids[:, a:b]), bounds, None, None,
                                   logits_for=lambda s, last: s != 1))
    assert [(s.start, s.end, s.last) for s in steps] == [(0, 6, False), (6, 12, False), (12, 18, False),
                                                           (18, 20, True)]
    assert steps[1].logits is None  # not asked for
    torch.testing.assert_close(steps[-1].logits, out.logits[:, 18:], rtol=0, atol=1e-12)
    for mine, theirs in zip(steps[-1].memory.layers, out.memory.layers):
        torch.testing.assert_close(mine.A, theirs.A, rtol=0, atol=1e-12)


def test_rows_without_tokens_keep_their_memory(tiny_armt):
    model = tiny_armt("gpt2")
    table = model.base_model.get_input_embeddings()
    ids = torch.randint(99, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, first = run_segment(model.cell, table(ids), None, None)
        mask = torch.tensor([[1] * 8, [0] * 8])
        _, second = run_segment(model.cell, table(ids), mask, first, active=mask.bool().any(dim=1))
    assert not torch.equal(second.layers[0].A[0], first.layers[0].A[0])
    assert torch.equal(second.layers[0].A[1], first.layers[0].A[1])
    assert second.segment_counts().tolist() == [2, 1]


def test_checkpointing_gives_the_same_gradients(tiny_armt):
    grads = []
    for checkpointing in (False, True):
        model = tiny_armt("gpt2").train()
        table = model.base_model.get_input_embeddings()
        ids = torch.randint(99, (1, 24), generator=torch.Generator().manual_seed(5))
        steps = list(iter_segments(model.cell, lambda a, b: table(ids[:, a:b]), segment_bounds(24, 8, "left"),
                                   None, None, checkpointing=checkpointing))
        steps[-1].logits.sum().backward()
        grads.append(model.cell.memory_layers[0].W_mv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
