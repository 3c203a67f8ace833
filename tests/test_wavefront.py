"""Wavefront (diagonal) reading equals the sequential segment loop, or is refused with a reason."""

from __future__ import annotations

import pytest
import torch

import armt
import armt.wavefront as wavefront_module
from armt.wavefront import Wavefront


def _relative_gap(a: armt.MemoryState, b: armt.MemoryState) -> float:
    gaps = []
    for x, y in zip(a.layers, b.layers):
        for s, t in ((x.A, y.A), (x.z, y.z)):
            if s is not None:
                gaps.append(((s - t).abs().max() / s.abs().max().clamp_min(1e-30)).item())
    return max(gaps)


@pytest.mark.all_families  # every family the project supports runs along the diagonals
@pytest.mark.parametrize("options", [{}, {"use_sink": True}, {"correction": False}, {"use_denom": False},
                                     {"gating": True, "n_heads": 2}, {"num_mem_tokens": 1},
                                     {"write_gate": "hard"}, {"write_gate": "hard", "gating": True, "n_heads": 2}])
def test_wavefront_state_equals_the_sequential_loop_float64(tiny_armt, family, options):
    model = tiny_armt(family, **options)
    ids = torch.randint(99, (2, 8 * 7), generator=torch.Generator().manual_seed(3))
    sequential = model.read([ids]).memory
    wave = Wavefront(model.cell).read(ids, None)
    assert wave.segments == sequential.segments == 7
    assert _relative_gap(sequential, wave) < 1e-10
    # continuing a state (the first segment reads), with fewer segments than layers too
    more = ids[:, :8]
    assert _relative_gap(model.read([more], sequential).memory, Wavefront(model.cell).read(more, wave)) < 1e-10


def test_wavefront_memory_drives_the_same_answer(tiny_armt):
    """The state from the wavefront gives the sequential model's next-token logits."""
    model = tiny_armt("llama")
    ids = torch.randint(99, (1, 8 * 5), generator=torch.Generator().manual_seed(4))
    query = torch.randint(99, (1, 6), generator=torch.Generator().manual_seed(5))
    sequential = model(query, memory=model.read([ids]).memory).logits
    wave = model(query, memory=model.read([ids], wavefront=True).memory).logits
    assert (sequential - wave).abs().max() < 1e-10


@pytest.mark.all_families
def test_wavefront_float32_within_1e5(tiny_armt, family):
    model = tiny_armt(family, dtype=torch.float32)
    ids = torch.randint(99, (1, 8 * 9), generator=torch.Generator().manual_seed(6))
    sequential, wave = model.read([ids]).memory, model.read([ids], wavefront=True).memory
    for x, y in zip(sequential.layers, wave.layers):
        assert (x.A - y.A).abs().max() <= 1e-5 * max(1.0, x.A.abs().max().item())
        assert (x.z - y.z).abs().max() <= 1e-5 * max(1.0, x.z.abs().max().item())


@pytest.mark.parametrize("keep_last_logits", [False, True])
def test_reader_with_wavefront_over_chunks_of_any_size(tiny_armt, keep_last_logits):
    model = tiny_armt("gpt2")
    ids = torch.randint(99, (2, 101), generator=torch.Generator().manual_seed(7))
    chunks = list(ids.split(37, dim=1))
    sequential = model.read(chunks, keep_last_logits=keep_last_logits)
    wave = model.read(chunks, keep_last_logits=keep_last_logits, wavefront=True)
    assert wave.tokens == sequential.tokens == 101
    assert wave.memory.segments == sequential.memory.segments
    assert _relative_gap(sequential.memory, wave.memory) < 1e-10
    if keep_last_logits:
        assert (sequential.last_logits - wave.last_logits).abs().max() < 1e-10
    # a stream left open continues the same way
    open_seq = model.read(chunks, flush=False)
    open_wave = model.read(chunks, flush=False, wavefront=True)
    assert torch.equal(open_seq.pending, open_wave.pending)
    assert _relative_gap(open_seq.memory, open_wave.memory) < 1e-10


def test_reader_with_wavefront_keeps_padded_rows_exact(tiny_armt):
    """Segments where a row has ended run one by one, as without the wavefront."""
    model = tiny_armt("llama")
    ids = torch.randint(99, (2, 40), generator=torch.Generator().manual_seed(8))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 21:] = 0
    results = []
    for wavefront in (False, True):
        reader = armt.MemoryReader(model, wavefront=wavefront)
        reader.feed(ids[:, :16])
        reader.feed(ids[:, 16:], attention_mask=mask[:, 16:])
        results.append(reader.finish())
    assert torch.equal(results[0].memory.segment_counts(), results[1].memory.segment_counts())
    assert _relative_gap(results[0].memory, results[1].memory) < 1e-10


def test_wavefront_refuses_an_unknown_family():
    import transformers

    torch.manual_seed(0)
    base = transformers.OPTForCausalLM(transformers.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                                              num_attention_heads=2, vocab_size=99,
                                                              word_embed_proj_dim=32)).eval()
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8)).eval()
    with pytest.raises(ValueError, match="'opt'.*wavefront=False"):
        Wavefront(model.cell)
    with pytest.raises(ValueError, match="ARMTConfig.wavefront=True. cannot run on this model.*'opt'"):
        armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8, wavefront=True))


def test_wavefront_refuses_what_it_cannot_run(tiny_armt):
    with pytest.raises(ValueError, match="sliding_window"):
        Wavefront(tiny_armt("llama", sliding_window=True).cell)
    with pytest.raises(ValueError, match="associative"):
        Wavefront(tiny_armt("llama", memory="tokens").cell)
    with pytest.raises(ValueError, match="associative"):
        Wavefront(tiny_armt("llama", memory="none").cell)
    model = tiny_armt("llama")
    with pytest.raises(ValueError, match="eval"):
        armt.MemoryReader(model.train(), wavefront=True)
    model.eval()
    with pytest.raises(ValueError, match="compute_loss"):
        armt.MemoryReader(model, compute_loss=True, wavefront=True)
    with pytest.raises(ValueError, match="multiple of segment_size"):
        Wavefront(model.cell).read(torch.zeros(1, 12, dtype=torch.long), None)


def test_wavefront_refuses_peft_adapters(tiny_base):
    peft = pytest.importorskip("peft")
    base = peft.get_peft_model(tiny_base("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"], lora_alpha=4))
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8)).eval()
    with pytest.raises(ValueError, match="merge"):
        Wavefront(model.cell)


@pytest.mark.all_families
@pytest.mark.parametrize("length", [8 * 6, 8 * 6 + 3])
def test_forward_with_wavefront_equals_the_sequential_forward(tiny_armt, family, length):
    model = tiny_armt(family, use_sink=family == "llama")
    ids = torch.randint(99, (2, length), generator=torch.Generator().manual_seed(9))
    start = model.read([ids[:, :16]]).memory
    with torch.no_grad():
        for kwargs in ({}, {"labels": ids}, {"labels": ids, "output_only_last_segment": True},
                       {"memory": start}):
            sequential = model(ids, wavefront=False, **kwargs)
            wave = model(ids, wavefront=True, **kwargs)
            assert wave.logits.shape == sequential.logits.shape
            assert (wave.logits - sequential.logits).abs().max() < 1e-10
            assert _relative_gap(sequential.memory, wave.memory) < 1e-10
            assert wave.memory.segments == sequential.memory.segments
            if "labels" in kwargs:
                assert abs(wave.loss - sequential.loss) < 1e-10
                assert torch.allclose(wave.segment_losses, sequential.segment_losses, atol=1e-10, equal_nan=True)


@pytest.mark.all_families
@pytest.mark.parametrize("with_state", [False, True])
def test_training_through_the_wavefront_gives_the_same_gradients(tiny_armt, family, with_state):
    """Forward and backward along the diagonals (no dropout): loss, memory and every gradient
    equal the sequential pass, also through a state passed in."""
    model = tiny_armt(family, use_sink=True).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "attn_pdrop"):
        if hasattr(model.cell.runner.config, name):
            setattr(model.cell.runner.config, name, 0.0)
    ids = torch.randint(99, (2, 8 * 5 + 3), generator=torch.Generator().manual_seed(12))
    start = model.eval().read([ids[:, :16]]).memory if with_state else None
    model.train()
    results = []
    for wavefront in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=ids, memory=start, wavefront=wavefront)
        (out.loss + out.memory.layers[-1].A.sum()).backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_seq, grads_seq), (loss_wave, grads_wave) = results
    assert abs(loss_seq - loss_wave) < 1e-10
    assert grads_seq.keys() == grads_wave.keys() and len(grads_seq) > 0
    for name, g in grads_seq.items():
        assert (g - grads_wave[name]).abs().max() <= 1e-9 * max(1.0, g.abs().max().item()), name


def test_config_wavefront_applies_where_it_can(tiny_armt):
    model = tiny_armt("gpt2", wavefront=True)
    ids = torch.randint(99, (1, 40), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        reference = model(ids, wavefront=False)
        assert (model(ids).logits - reference.logits).abs().max() < 1e-10
        # padded batches run segment by segment (no error), with the same result as before
        mask = torch.ones(2, 40, dtype=torch.long)
        mask[1, :5] = 0
        two = torch.cat([ids, ids])
        assert torch.equal(model(two, attention_mask=mask).logits, model(two, attention_mask=mask, wavefront=False).logits)
    # with gradients (training) it is the sequential forward: gradients flow
    out = model(ids, labels=ids)
    out.loss.backward()
    assert model.cell.memory_layers[0].W_mv.weight.grad is not None
    # the stacked weights follow the weights
    with torch.no_grad():
        model.cell.memory_layers[1].W_mv.weight.mul_(0.5)
        assert (model(ids).logits - model(ids, wavefront=False).logits).abs().max() < 1e-10


def test_explicit_wavefront_says_why_it_cannot_run(tiny_armt):
    model = tiny_armt("gpt2")
    ids = torch.randint(99, (2, 40), generator=torch.Generator().manual_seed(11))
    with pytest.raises(ValueError, match="checkpointing"):
        model.gradient_checkpointing_enable()
        model(ids, wavefront=True)
    model.gradient_checkpointing_disable()
    with pytest.raises(ValueError, match="bptt_segments"):
        tiny_armt("gpt2", bptt_segments=2)(ids, wavefront=True)
    with torch.no_grad():
        with pytest.raises(ValueError, match="padded"):
            model(ids, attention_mask=torch.tensor([[1] * 40, [0] + [1] * 39]), wavefront=True)
        with pytest.raises(ValueError, match="alignment"):
            tiny_armt("gpt2", segment_alignment="right")(ids, wavefront=True)
        with pytest.raises(ValueError, match="training mode"):
            model.train()(ids, wavefront=True)
    with pytest.raises(ValueError, match="sliding window"):
        armt.ARMTConfig(wavefront=True, sliding_window=True)
    with pytest.raises(TypeError, match="wavefront"):
        armt.ARMTConfig(wavefront="yes")


def test_generate_reads_its_context_along_the_diagonals_with_the_config(tiny_armt):
    model = tiny_armt("llama", wavefront=True)
    plain = tiny_armt("llama")
    prompt = torch.randint(99, (1, 8 * 4 + 5), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        ids, memory = model.generate(prompt, max_new_tokens=6, do_sample=False, return_memory=True, pad_token_id=0)
        ref_ids, ref_memory = plain.generate(prompt, max_new_tokens=6, do_sample=False, return_memory=True,
                                             pad_token_id=0)
    assert torch.equal(ids, ref_ids)
    assert _relative_gap(ref_memory, memory) < 1e-10
    assert model.cell in wavefront_module._PLANS  # the wavefront did run


def test_capacity_model_trains_through_the_wavefront():
    """CapacityModelSpec(wavefront=True) trains along the diagonals, with the sequential loss."""
    from armt.data.capacity import CapacityConfig, capacity_batch
    from armt.training.capacity import CapacityModelSpec, time_training_step

    task = CapacityConfig(num_pairs=3)
    spec = CapacityModelSpec(layers=2, hidden=32, heads=2, intermediate=64, wavefront=True)
    net = spec.build(task).train()
    batch = capacity_batch(task, 4, torch.Generator().manual_seed(0))
    ids, labels = batch["input_ids"], batch["labels"]
    wave = net(ids, labels=labels, output_only_last_segment=True, wavefront=True).loss
    seq = net(ids, labels=labels, output_only_last_segment=True, wavefront=False).loss
    assert abs(wave.item() - seq.item()) < 1e-5
    assert time_training_step(net, 3, batch_size=4, repeats=1) > 0
    with pytest.raises(ValueError, match="kind='armt'"):
        CapacityModelSpec(kind="rmt", wavefront=True)
