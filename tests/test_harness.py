"""The lm-evaluation-harness model: every request through the memory equals one forward pass over
the whole input; the harness's BABILong task on make-data samples gives armt babilong eval's
answers and score; the command line runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import armt

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from armt.data.babi import load_babi_task  # noqa: E402
from armt.data.babilong_prompt import BabilongPrompt  # noqa: E402
from armt.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from armt.evaluation.babilong_eval import evaluate_babilong, make_babilong_data  # noqa: E402
from armt.harness import TASKS_DIR, ARMTHarnessLM  # noqa: E402

S = 16  # segment size: every context below crosses several segments


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok(data_dir):
    facts = [f for s in load_babi_task("qa1", root=data_dir / "babi")[:100] for f in s.facts]
    text = (data_dir / "gutenberg" / "austen-emma.txt").read_text(encoding="utf-8")[20_000:60_000]
    return train_bpe_tokenizer(facts + [text, "Where is Mary? The most recent location"], vocab_size=300)


@pytest.fixture(scope="module")
def model_dir(tiny_base, tok, tmp_path_factory):
    base = tiny_base("llama", vocab=len(tok))
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=S)).eval()
    torch.manual_seed(1)
    for mem in model.cell.memory_layers:  # W_mv starts at zero: make the memory matter
        torch.nn.init.normal_(mem.W_mv.weight, std=0.3)
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path, save_base=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(model_dir):
    lm = ARMTHarnessLM(str(model_dir))
    lm.folder = model_dir
    return lm


def lm_dir(lm):
    return lm.folder


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def whole_logprobs(model, ids):
    return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


@pytest.mark.parametrize("context_len", [1, S - 1, S, S + 1, 3 * S, 3 * S + 5])
def test_loglikelihood_through_memory_equals_one_forward_over_the_whole_input(lm, context_len):
    g = torch.Generator().manual_seed(context_len)
    context = torch.randint(5, 290, (context_len,), generator=g).tolist()
    continuation = torch.randint(5, 290, (S + 3,), generator=g).tolist()  # crosses a segment end too
    (logprob, greedy), = lm.loglikelihood_tokens([(context, continuation)])
    scores = whole_logprobs(lm.model, context + continuation)[context_len - 1:-1]
    target = torch.tensor(continuation)
    assert logprob == pytest.approx(scores.gather(-1, target[:, None]).sum().item(), abs=1e-4)
    assert greedy == bool((scores.argmax(-1) == target).all())
    # the greedy flag is right when it is true as well
    best = scores[:1].argmax(-1).tolist()
    (_, greedy_one), = lm.loglikelihood_tokens([(context, best)])
    assert greedy_one


def test_the_memory_carries_the_context(lm, model_dir):
    context = torch.arange(5, 5 + 4 * S).tolist()
    continuation = [7, 8, 9]
    wiped = ARMTHarnessLM(str(model_dir), wipe_memory="true")
    (with_memory, _), = lm.loglikelihood_tokens([(context, continuation)])
    (without, _), = wiped.loglikelihood_tokens([(context, continuation)])
    assert with_memory != pytest.approx(without, abs=1e-4)
    # the wiped control sees only the last partial segment: as a forward over it alone
    rest = context[3 * S:]
    scores = whole_logprobs(lm.model, rest + continuation)[len(rest) - 1:-1]
    assert without == pytest.approx(scores.gather(-1, torch.tensor(continuation)[:, None]).sum().item(), abs=1e-4)


def test_text_requests_tokenize_as_the_harness_does(lm, tok):
    context, continuation = "Mary went to the kitchen. Where is Mary?", " kitchen"
    (got,) = lm.loglikelihood([request("loglikelihood", context + " ", "kitchen")])
    head = lm.prefix_ids + tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(head) - len(lm.prefix_ids):]
    assert got == lm.loglikelihood_tokens([(head, cont)])[0]


def test_answers_that_share_a_context_read_it_once_and_keep_their_order(lm, monkeypatch):
    context = torch.arange(5, 5 + 3 * S + 2).tolist()
    choices = [[7, 8], [9], [10, 11, 12]]
    alone = [lm.loglikelihood_tokens([(context, c)])[0] for c in choices]
    reads = []
    read = lm._read_context
    monkeypatch.setattr(lm, "_read_context", lambda ids: reads.append(len(ids)) or read(ids))
    requests = [request("loglikelihood", "Mary went home.", " kitchen"), request("loglikelihood", "Where", " is"),
                request("loglikelihood", "Mary went home.", " garden")]
    together = lm.loglikelihood(requests)
    assert len(reads) == 2  # two distinct contexts
    assert together == [lm.loglikelihood([r])[0] for r in requests]
    assert lm.loglikelihood_tokens([(context, c) for c in choices]) == alone


def test_rolling_loglikelihood_streams_a_document_as_one_forward(lm, tok, data_dir):
    text = (data_dir / "gutenberg" / "austen-emma.txt").read_text(encoding="utf-8")[30_000:31_500]
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    ids = [lm.rolling_prefix_id] + tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 10 * S
    scores = whole_logprobs(lm.model, ids)[:-1]
    assert got == pytest.approx(scores.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item(), rel=1e-5)


def test_generation_reads_the_context_through_memory_and_stops_where_told(lm, tok):
    context = "Mary went to the kitchen. John moved to the garden. " * 6 + "Where is Mary?"
    ids = lm.prefix_ids + tok(context, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * S
    (text,) = lm.generate_until([request("generate_until", context, {"max_gen_toks": 12, "until": []})])
    eos = tok.eos_token_id
    out = lm.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                            pad_token_id=eos)[0, len(ids):].tolist()
    out = out[:out.index(eos)] if eos in out else out
    assert text == tok.decode(out, skip_special_tokens=True) and text
    stop = text[len(text) // 2:][:2]
    (cut,) = lm.generate_until([request("generate_until", context, {"max_gen_toks": 12, "until": [stop]})])
    assert cut == text[:text.index(stop)]
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([request("generate_until", context, {"do_sample": True, "temperature": 1.0})])


def test_bad_model_args_are_refused(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        ARMTHarnessLM(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="batch_sizes"):
        ARMTHarnessLM(str(model_dir), batch_sizes=4)
    with pytest.raises(ValueError, match="dtype"):
        ARMTHarnessLM(str(model_dir), dtype="float33")
    with pytest.raises(ValueError, match="max_length"):
        ARMTHarnessLM(str(model_dir), max_length=8).loglikelihood_tokens([(list(range(5, 20)), [5])])


@pytest.fixture(scope="module")
def babilong_dir(tok, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("babilong")
    make_babilong_data(tok, out, tasks="qa1", lengths=["0k", "1k"], n_samples=4, babi_source=data_dir / "babi",
                       background=data_dir / "gutenberg", progress=False, log=None)
    return out


def harness_run(lm, babilong_dir, length):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"data_dir": str(babilong_dir),
                                                                 "max_seq_lengths": length})
    res = lm_eval.simple_evaluate(model=lm, tasks=["armt_babilong_qa1"], task_manager=manager, log_samples=True)
    samples = sorted(res["samples"]["armt_babilong_qa1"], key=lambda s: s["doc_id"])
    return res["results"]["armt_babilong_qa1"]["acc,none"], [s["resps"][0][0] for s in samples]


@pytest.mark.parametrize("length", ["0k", "1k"])
def test_the_harness_babilong_task_gives_armt_babilong_evals_answers_and_score(lm, babilong_dir, length):
    path = babilong_dir / length / "qa1.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    _, answers = harness_run(lm, babilong_dir, length)
    # a random model is never right: make two targets words it says, so the score is not 0
    for record, answer in zip(records[:2], answers):
        record["target"] = answer.strip().split()[0] if answer.strip() else record["target"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    score, answers = harness_run(lm, babilong_dir, length)
    run = evaluate_babilong(lm.model, lm.tokenizer, tasks="qa1", lengths=length, n_samples=4,
                            babi_source=f"hf:{babilong_dir}", metric="contains", progress=False, log=None,
                            prompt=BabilongPrompt.from_harness_task(TASKS_DIR / "armt_babilong_qa1.yaml"))
    assert [r["prediction"] for r in run.predictions] == answers
    assert run.results[0]["accuracy"] == pytest.approx(score) and score >= 0.5
    if length == "1k":
        assert min(r["context_tokens"] for r in run.predictions) > 30 * S  # many segments read into memory
    else:  # the command line's flags reach the same settings
        from armt.cli import main

        out = babilong_dir / "eval"
        assert main(["babilong", "eval", "--model", str(lm_dir(lm)), "--babi", f"hf:{babilong_dir}", "--tasks", "qa1",
                     "--lengths", length, "--n", "4", "--harness-prompt", str(TASKS_DIR / "armt_babilong_qa1.yaml"),
                     "--metric", "contains", "--out", str(out), "--threads", "1", "--quiet"]) == 0
        saved = [json.loads(line) for line in (out / "predictions" / f"qa1_{length}.jsonl").read_text().splitlines()]
        assert [r["prediction"] for r in saved] == answers
        assert json.loads((out / "results.json").read_text())["metadata"]["settings"]["metric"] == "contains"


def test_the_preamble_is_the_harness_prompt(tok):
    """The harness's own babilong_qa1 and armt's copy lay a sample out the same way."""
    import importlib.util
    from pathlib import Path

    theirs = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks" / "babilong" / "babilong_qa1.yaml"
    if not theirs.exists():
        pytest.skip("this lm_eval has no babilong_qa1 task")
    assert BabilongPrompt.from_harness_task(theirs) == BabilongPrompt.from_harness_task(
        TASKS_DIR / "armt_babilong_qa1.yaml")


def test_armt_lm_eval_command_runs_the_harness_with_armts_model_and_tasks(model_dir, data_dir, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    book = (data_dir / "gutenberg" / "austen-emma.txt").read_text(encoding="utf-8")
    (texts / "a.txt").write_text(book[40_000:41_000])
    (texts / "b.txt").write_text(book[50_000:50_600])
    out = subprocess.run([sys.executable, "-m", "armt.cli", "lm-eval", "--model", "armt", "--model_args",
                          f"pretrained={model_dir}", "--tasks", "armt_text_perplexity", "--device", "cpu",
                          "--metadata", json.dumps({"data_dir": str(texts)}), "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    byte_ppl = result["results"]["armt_text_perplexity"]["byte_perplexity,none"]
    # the harness's byte perplexity from this model's rolling log-likelihoods
    lm = ARMTHarnessLM(str(model_dir))
    texts_in = [book[40_000:41_000], book[50_000:50_600]]
    total = sum(lm.loglikelihood_rolling([request("loglikelihood_rolling", t)])[0] for t in texts_in)
    size = sum(len(t.encode()) for t in texts_in)
    assert byte_ppl == pytest.approx(float(torch.exp(torch.tensor(-total / size, dtype=torch.float64))), rel=1e-5)
    missing = subprocess.run([sys.executable, "-m", "armt.cli", "lm-eval"], capture_output=True, text=True)
    assert missing.returncode == 2 and "usage: armt lm-eval" in missing.stdout
