"""BABILong evaluation of an ARMT model, and BABILong data sets written to disk.

A sample is never held whole: its context streams out of the sample plan
(:meth:`armt.data.babilong.BabilongSample.iter_token_chunks`) into a
:class:`armt.streaming.MemoryReader`, which writes every full segment to memory and keeps the
last partial one open (``flush=False``). The answer is then generated after
``[open segment][query]`` reading that memory. Segments are cut left-aligned from the first
token in both cases, so this is exactly ``model.generate`` over the whole sample, at a memory
use that does not grow with the length (10M tokens cost what 16k tokens cost).

The tokens of a sample are laid out by :class:`armt.data.babilong.BabilongPrompt` (the same
template the training recipe uses). Answers are cut at EOS and at their first line break, and
scored with :func:`armt.evaluation.babilong_scoring.compare_answers` (and exact match). Results
go to ``out_dir`` as ``results.{csv,json,md}`` and ``heatmap.png``
(:mod:`armt.evaluation.reports`), with every prediction in ``predictions/<task>_<length>.jsonl``;
a run that stops can be started again and skips the (task, length) pairs already done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from armt.adapters import unwrap_adapters
from armt.data.babi import SPLITS, load_babilong_hf, normalize_task
from armt.data.babilong import BabilongPrompt, iter_babilong, length_name, parse_length, write_jsonl
from armt.data.babilong_prompt import check_question_segment
from armt.data.babilong_sources import BUILTIN, BabilongSources, open_sources  # noqa: F401  (part of this API)
from armt.evaluation.babilong_scoring import METRICS, compare_answers, contains_target, exact_match
from armt.evaluation.reports import (
    FILES,
    PREDICTIONS_DIR,
    load_metadata,
    load_results,
    markdown_table,
    merge_results,
    prediction_files,
    result_record,
    write_results,
)
from armt.generation import generation_defaults
from armt.streaming import MemoryReader

from ..checks import InputTypeError

MANIFEST = "manifest.json"
DATA_FORMAT = "armt.babilong.v1"
DEFAULT_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
DEFAULT_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k")
Log = Callable[[str], None]


@dataclass
class BabilongSettings:
    """What a BABILong run covers and how it decodes.

    Args:
        tasks: ``"qa1"`` .. ``"qa20"`` (a list, or one string ``"qa1,qa2"``).
        lengths: context lengths, ``"0k"`` .. ``"10M"`` or token counts (a list or ``"0k,4k"``).
        n_samples: samples per task and length.
        seed: where the background starts and where the facts go.
        max_new_tokens: tokens generated per answer (bAbI answers are one or two words).
        split: the bAbI split the questions come from.
        prompt: the token layout of a sample (:class:`~armt.data.babilong.BabilongPrompt`).
        question_segment: ``"shared"`` (the whole sample through the model as one input, as the
            BABILong evaluation does: the question follows the context's last partial segment, and
            the two are cut into segments together) or ``"alone"`` (the context is written into
            memory whole, its last partial segment too, and the question starts a segment of its
            own, so only the memory can carry the facts to it); see :func:`answer_sample`.
        metric: ``"babilong"`` (BABILong's label rule on the answer's first line,
            :func:`~armt.evaluation.babilong_scoring.compare_answers`) or ``"contains"``
            (lm-evaluation-harness's babilong metric: the target inside the generated text,
            :func:`~armt.evaluation.babilong_scoring.contains_target`).

    Example:
        >>> s = BabilongSettings(tasks="qa1, 2", lengths="0k,4096", n_samples=5)
        >>> s.tasks, s.lengths
        (['qa1', 'qa2'], ['0k', '4k'])
    """

    tasks: Sequence[str] = DEFAULT_TASKS
    lengths: Sequence[str | int] = DEFAULT_LENGTHS
    n_samples: int = 100
    seed: int = 0
    max_new_tokens: int = 16
    split: str = "test"
    prompt: BabilongPrompt = field(default_factory=BabilongPrompt)
    question_segment: str = "shared"
    metric: str = "babilong"

    def __post_init__(self) -> None:
        tasks = self.tasks.split(",") if isinstance(self.tasks, str) else list(self.tasks)
        self.tasks = list(dict.fromkeys(normalize_task(t) for t in tasks if str(t).strip()))
        lengths = self.lengths.split(",") if isinstance(self.lengths, str) else list(self.lengths)
        self.lengths = list(dict.fromkeys(length_name(parse_length(x)) for x in lengths if str(x).strip()))
        if not self.tasks or not self.lengths:
            raise ValueError(f"tasks={self.tasks!r} and lengths={self.lengths!r} must each name at least one; "
                             "use e.g. tasks='qa1,qa2', lengths='0k,4k'.")
        for name in ("n_samples", "max_new_tokens", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be an int >= {0 if name == 'seed' else 1}, got {value!r}.")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is unknown; use one of {SPLITS}.")
        check_question_segment(self.question_segment)
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is unknown; use one of {METRICS}.")
        if not isinstance(self.prompt, BabilongPrompt):
            raise InputTypeError(f"prompt must be a BabilongPrompt, got {type(self.prompt).__name__}.")

    def run_key(self) -> dict[str, Any]:
        """The settings two runs must share for their results to go in one table."""
        key = asdict(self)
        del key["tasks"], key["lengths"]
        # results saved before these options existed stay resumable
        if key["question_segment"] == "shared":
            del key["question_segment"]
        if key["metric"] == "babilong":
            del key["metric"]
        if not key["prompt"]["preamble"]:
            del key["prompt"]["preamble"]
        return key


@dataclass(frozen=True)
class _TextSample:
    """A published BABILong record, its context tokenized whole (the Hub keeps it as one string)."""

    task: str
    question: str
    target: str
    ids: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    def iter_token_chunks(self, chunk_size: int) -> Iterator[list[int]]:
        for start in range(0, len(self.ids), chunk_size):
            yield self.ids[start:start + chunk_size]

    def input_ids(self) -> list[int]:
        return list(self.ids)


def iter_samples(task: str, length: str, tokenizer, settings: BabilongSettings, sources: BabilongSources) -> Iterator[Any]:
    """The samples of one task and length: lazy plans (:class:`~armt.data.babilong.BabilongSample`)
    built from the sources; questions whose facts alone exceed the length are left out and
    the next ones taken, so every context fits its length."""
    if isinstance(sources.babi, str) and sources.babi.startswith("hf:"):
        for record in load_babilong_hf(task, length, dataset=sources.babi[3:], n=settings.n_samples):
            ids = tokenizer([record["input"]], add_special_tokens=False)["input_ids"][0]
            yield _TextSample(task, record["question"], record["target"], list(ids))
        return
    yield from iter_babilong(task, length, settings.n_samples, tokenizer, sources.background, settings.seed,
                             sources.babi, split=settings.split, on_overflow="skip")


@dataclass
class SampleAnswer:
    """What the model answered to one sample.

    Attributes:
        new_ids: generated tokens, up to (not including) the first EOS.
        text: ``new_ids`` decoded.
        answer: ``text`` cut at its first line break (:meth:`BabilongPrompt.cut_answer`).
        prompt_tokens: tokens read before generating (BOS, context and query).
        seconds: time to read the sample and generate.
    """

    new_ids: list[int]
    text: str
    answer: str
    prompt_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return (self.prompt_tokens + len(self.new_ids)) / max(self.seconds, 1e-9)


@torch.no_grad()
def answer_sample(model, tokenizer, sample, *, prompt: BabilongPrompt | None = None, max_new_tokens: int = 16,
                  memory=None, chunk_size: int | None = None, wipe_memory: bool = False,
                  question_segment: str = "shared") -> SampleAnswer:
    """Read one sample into memory chunk by chunk and generate its answer greedily.

    Equal to ``model.generate([bos] + context + query)`` over the whole sample (the tests
    check the tokens), but only one chunk of the context is ever held. The context's last
    partial segment is then part of the input ``generate`` gets, and the query often crosses
    into a new segment with it (a context of 255 tokens, segments of 256: the question's first
    token shares the context's segment, the rest starts the next). A model whose
    ``segment_alignment`` is not ``"left"`` cuts its segments from the end of the input, which
    a stream cannot know in advance, so such a model gets the whole sample at once.

    Args:
        model: an :class:`armt.ARMTForCausalLM` (in eval mode).
        tokenizer: the model's tokenizer (the sample's lengths were measured with it).
        sample: a :class:`~armt.data.babilong.BabilongSample` (anything with ``question``,
            ``iter_token_chunks`` and ``input_ids``).
        prompt: the token layout; default :class:`~armt.data.babilong.BabilongPrompt`.
        max_new_tokens: tokens to generate at most (generation stops at EOS).
        memory: a state every sample starts from (``None``: empty memory).
        chunk_size: context tokens fed at a time; default 16 segments.
        wipe_memory: replace the memory read from the context by an empty one before the
            question (the same weights without what the memory carries: the control that
            shows how much of an answer comes from the memory). With ``question_segment="shared"``
            only the full segments are wiped: the last partial one goes into ``generate`` with
            the query and is still seen, directly or through the memory it writes there.
        question_segment: ``"shared"`` as above; ``"alone"`` writes the whole context into
            memory (its last partial segment too) and gives the query a segment of its own, so
            that everything the question needs crosses through the memory, and ``wipe_memory``
            leaves the question with nothing but itself (the context is then not read at all,
            as nothing of it could reach the answer, and ``prompt_tokens`` counts the query only).
    """
    check_question_segment(question_segment)
    prompt = prompt or BabilongPrompt()
    device = model.cell.memory_tokens.device
    head = prompt.head_ids(tokenizer)
    query = torch.tensor([prompt.query_ids(tokenizer, sample.question)], device=device)
    start = time.perf_counter()
    if wipe_memory and question_segment == "alone" and model.config.segment_alignment == "left":
        # the memory read from the context would be thrown away whole, so the context is not read
        ids, memory, done = query, None, 0
    elif model.config.segment_alignment == "left":
        reader = MemoryReader(model, memory)
        if head:
            reader.feed(head)
        for chunk in sample.iter_token_chunks(chunk_size or 16 * model.config.segment_size):
            reader.feed(chunk)
        read = reader.finish(flush=question_segment == "alone")
        ids = torch.cat([read.pending.to(device), query], dim=1)
        memory, done = (None if wipe_memory else read.memory), read.tokens
    else:
        if wipe_memory or question_segment == "alone":
            raise ValueError("wipe_memory and question_segment='alone' need segment_alignment='left': the context "
                             "must be read before the question.")
        ids = torch.cat([torch.tensor([head + sample.input_ids()], dtype=torch.long, device=device), query], dim=1)
        done = 0
    options = {"do_sample": False, **generation_defaults(tokenizer)}
    eos = options.get("eos_token_id")
    out = model.generate(ids, memory=memory, max_new_tokens=max_new_tokens, **options)
    new = out[0, ids.shape[1]:].tolist()
    if eos is not None and eos in new:
        new = new[:new.index(eos)]
    seconds = time.perf_counter() - start
    text = tokenizer.decode(new, skip_special_tokens=True)
    return SampleAnswer(new, text, prompt.cut_answer(text), done + ids.shape[1], seconds)


def describe_model(model, name: str | None = None) -> dict[str, Any]:
    """The model's name, class, base config hash and a hash of its ARMT weights, so that a
    resumed run can tell whether the same model wrote the results it continues."""
    from armt.saving import base_config_hash

    base = unwrap_adapters(model.base_model)
    return {"name": name, "class": type(base).__name__, "base_config_hash": base_config_hash(getattr(base, "config", None)),
            "armt_weights_sha256": _digest(model.cell.armt_state_dict()), "segment_size": model.config.segment_size,
            "num_mem_tokens": model.config.num_mem_tokens}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(tensors.items()):
        digest.update(key.encode())
        digest.update(value.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class BabilongEvalResult:
    """What :func:`evaluate_babilong` did.

    Attributes:
        results: one result per (task, length) (see :func:`armt.evaluation.reports.result_record`),
            those found in ``out_dir`` included.
        evaluated: the pairs run now; ``skipped``: those already in ``out_dir``.
        predictions: one record per sample of the pairs run now (question, target, prediction,
            answer, correct, tokens, speed), as in ``predictions/<task>_<length>.jsonl``.
        sources: the data sources used.
        table: the Markdown table of ``results``.
        paths: the files written (``results.md``, ``results.csv``, ``results.json``,
            ``heatmap.png`` and the predictions), empty without ``out_dir``.
    """

    results: list[dict[str, Any]]
    evaluated: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    predictions: list[dict[str, Any]]
    sources: BabilongSources
    table: str
    paths: dict[str, Path] = field(default_factory=dict)


def _predictions_path(out: Path, task: str, length: str) -> Path:
    return out / PREDICTIONS_DIR / f"{task}_{length}.jsonl"


def _same_run(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The metadata entries that differ between two runs (the model's name may change)."""
    clash = []
    for part in ("model", "sources", "settings"):
        a, b = dict(old.get(part) or {}), dict(new[part])
        if part == "model":
            a.pop("name", None), b.pop("name", None)
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            clash += [f"{part}.{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys]
    return clash


def _previous_results(out: Path, metadata: dict[str, Any], overwrite: bool, say: Log) -> tuple[list, dict]:
    old = load_results(out)
    if not old:
        return [], {}
    if overwrite:
        stale = {(r["task"], r["length"]) for r in old}
        for task, length, path in prediction_files(out):
            if (task, length) in stale:
                path.unlink()
        say(f"--overwrite: discarding the {len(old)} results in {out}")
        return [], {}
    before = load_metadata(out)
    clash = _same_run(before, metadata) if before else ["no record of the run that wrote them"]
    if clash:
        raise FileExistsError(
            f"{out} holds results of another run ({'; '.join(clash[:4])}); pass overwrite=True (--overwrite) to "
            "replace them, or choose another output folder."
        )
    return old, dict(before.get("pairs") or {})


def evaluate_babilong(model, tokenizer, *, tasks: Sequence[str] | str = DEFAULT_TASKS,
                      lengths: Sequence[str | int] | str = DEFAULT_LENGTHS, n_samples: int = 100,
                      babi_source: Any = None, background: Any = None, seed: int = 0, max_new_tokens: int = 16,
                      prompt: BabilongPrompt | None = None, split: str = "test",
                      out_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
                      memory=None, model_name: str | None = None, log: Log | None = print,
                      wipe_memory: bool = False, question_segment: str = "shared",
                      metric: str = "babilong") -> BabilongEvalResult:
    """Accuracy of ``model`` on BABILong, per task and context length.

    Every sample is read in chunks at constant memory and answered greedily
    (:func:`answer_sample`); an answer is right when :func:`compare_answers` (or the ``metric``
    chosen) says so. With
    ``out_dir``, each finished (task, length) pair is saved at once (results tables, heatmap,
    ``predictions/<task>_<length>.jsonl``), and a later call with the same model, sources and
    settings skips the pairs found there; results of a different run are refused unless
    ``overwrite``, which discards them.

    Args:
        model: an :class:`armt.ARMTForCausalLM`.
        tokenizer: its tokenizer; lengths are counted in its tokens.
        tasks, lengths, n_samples, seed, max_new_tokens, split, prompt: see :class:`BabilongSettings`.
        babi_source, background: see :func:`open_sources` (or pass ``babi_source=open_sources(...)``).
        out_dir: the results folder (``None``: nothing written, nothing resumed).
        overwrite: replace the results in ``out_dir`` instead of resuming.
        progress: tqdm bars over samples, with the reading speed.
        memory: a state every sample starts from.
        model_name: how the results name the model (e.g. its directory).
        log: where progress lines go (``None``: nowhere).
        wipe_memory: answer every question from an empty memory after reading the context
            (see :func:`answer_sample`); recorded in the results, so such a run never mixes
            with a normal one.
        question_segment: ``"shared"`` or ``"alone"``, see :class:`BabilongSettings`.
        metric: ``"babilong"`` or ``"contains"``, see :class:`BabilongSettings`.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> from armt.data.tokenizer import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(["Mary went to the kitchen. Where is Mary?"], vocab_size=300)
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok)))
        >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=64)).eval()
        >>> run = evaluate_babilong(model, tok, tasks="qa1,qa2", lengths="0k", n_samples=2, babi_source="builtin",
        ...                         max_new_tokens=4, progress=False, log=None)
        >>> [(r["task"], r["length"], r["n"]) for r in run.results]
        [('qa1', '0k', 2), ('qa2', '0k', 2)]
    """
    from tqdm.auto import tqdm

    settings = BabilongSettings(tasks, lengths, n_samples, seed, max_new_tokens, split, prompt or BabilongPrompt(),
                                question_segment, metric)
    say = log or (lambda line: None)
    sources = babi_source if isinstance(babi_source, BabilongSources) else open_sources(
        babi_source, background, seed=seed, split=split)
    say(f"bAbI questions: {sources.babi_description}")
    say(f"background text: {sources.background_description}")
    start_memory = None if memory is None else _digest(memory.tensors())
    metadata = {"model": describe_model(model, model_name), "sources": sources.to_dict(),
                "settings": {**settings.run_key(), "start_memory_sha256": start_memory,
                             **({"wipe_memory": True} if wipe_memory else {})}, "pairs": {}}
    out = Path(out_dir) if out_dir is not None else None
    results, pairs = _previous_results(out, metadata, overwrite, say) if out is not None else ([], {})
    metadata["pairs"] = pairs
    done = {(r["task"], r["length"]) for r in results}
    todo = [(t, n) for t in settings.tasks for n in settings.lengths if (t, n) not in done]
    skipped = [(t, n) for t in settings.tasks for n in settings.lengths if (t, n) in done]
    if skipped:
        say(f"skipping {len(skipped)} (task, length) pairs already in {out}: "
            + ", ".join(f"{t} {n}" for t, n in skipped) + " (overwrite=True / --overwrite recomputes them)")
    paths: dict[str, Path] = {}
    predictions: list[dict[str, Any]] = []
    model.eval()
    for task, length in todo:
        records = []
        bar = tqdm(total=settings.n_samples, desc=f"{task} {length}", unit="sample", disable=not progress,
                   dynamic_ncols=True)
        start = time.perf_counter()
        for index, sample in enumerate(iter_samples(task, length, tokenizer, settings, sources)):
            got = answer_sample(model, tokenizer, sample, prompt=settings.prompt,
                                max_new_tokens=settings.max_new_tokens, memory=memory, wipe_memory=wipe_memory,
                                question_segment=settings.question_segment)
            records.append({
                "task": task, "length": length, "index": index, "question": sample.question,
                "target": sample.target, "prediction": got.text, "answer": got.answer,
                "correct": (compare_answers(got.answer, sample.target, sample.question, task)
                            if settings.metric == "babilong" else contains_target(got.text, sample.target)),
                "exact_match": exact_match(got.answer, sample.target), "context_tokens": sample.num_tokens,
                "prompt_tokens": got.prompt_tokens, "new_tokens": len(got.new_ids),
                "seconds": round(got.seconds, 4), "tokens_per_s": round(got.tokens_per_second, 1)})
            bar.set_postfix_str(f"{got.tokens_per_second:,.0f} tok/s")
            bar.update(1)
        bar.close()
        predictions += records
        seconds = time.perf_counter() - start
        correct = sum(r["correct"] for r in records)
        tokens = sum(r["prompt_tokens"] + r["new_tokens"] for r in records)
        results = merge_results(results, [result_record(task, length, correct, len(records))])
        metadata["pairs"][f"{task}/{length}"] = {
            "exact_match": sum(r["exact_match"] for r in records), "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
        say(f"{task} {length}: {correct}/{len(records)} right ({100 * correct / len(records):.1f}%), "
            f"{tokens:,} tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)")
        if out is not None:
            paths[f"predictions/{task}_{length}"] = write_jsonl(records, _predictions_path(out, task, length),
                                                                overwrite=True)
            title = "BABILong accuracy, %" + (f", {Path(model_name).name}" if model_name else "")
            paths.update(write_results(results, out, overwrite=True, metadata=metadata, title=title))
    if out is not None and not todo:
        paths.update({name: out / name for name in FILES if (out / name).exists()})
    return BabilongEvalResult(results, todo, skipped, predictions, sources, markdown_table(results), paths)


def _write_sample(f, sample) -> None:
    # the context goes out piece by piece, so a 10M-token sample is never one string
    f.write('{"input": "')
    for piece in sample.iter_pieces():
        f.write(json.dumps(piece, ensure_ascii=False)[1:-1])
    # the same fields, in the same order, as BabilongSample.to_record()
    rest = {"question": sample.question, "target": sample.target, "task": sample.task,
            "length": length_name(sample.length), "num_tokens": sample.num_tokens}
    f.write('", ' + json.dumps(rest, ensure_ascii=False)[1:] + "\n")


def make_babilong_data(tokenizer, out_dir: str | os.PathLike, *, tasks: Sequence[str] | str = DEFAULT_TASKS,
                       lengths: Sequence[str | int] | str = DEFAULT_LENGTHS, n_samples: int = 100,
                       babi_source: Any = None, background: Any = None, seed: int = 0, split: str = "test",
                       overwrite: bool = False, progress: bool = True, tokenizer_name: str | None = None,
                       log: Log | None = print) -> list[Path]:
    """Write BABILong sets: ``<out_dir>/<length>/<task>.jsonl`` and ``manifest.json``.

    Records have lm-evaluation-harness's ``babilong`` fields ``input`` (the context),
    ``question`` and ``target``, and ``task``, ``length`` and ``num_tokens`` (context tokens
    of ``tokenizer``); one folder per length and one file per task mirror the Hub sets (config
    = length, split = task): ``datasets.load_dataset("json", data_files={"qa1":
    "out/4k/qa1.jsonl"})``. Contexts are written piece by piece, never held whole. The
    manifest names the sources, the tokenizer and the settings. Existing files are refused
    unless ``overwrite`` (nothing is written then).

    Args:
        tokenizer: measures the lengths.
        out_dir: the folder to write.
        tasks, lengths, n_samples, seed, split: see :class:`BabilongSettings`.
        babi_source, background: see :func:`open_sources` (the published ``"hf"`` sets are
            BABILong data already and are refused).
        overwrite: replace existing files.
        progress: a tqdm bar over samples.
        tokenizer_name: how the manifest names the tokenizer (default its ``name_or_path``).
        log: where progress lines go (``None``: nowhere).

    Returns:
        The paths of the JSONL files, in task then length order.

    Example:
        >>> import tempfile
        >>> from armt.data.tokenizer import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(["Mary went to the kitchen."], vocab_size=300)
        >>> paths = make_babilong_data(tok, tempfile.mkdtemp(), tasks="qa1", lengths="0k,1k", n_samples=3,
        ...                            babi_source="builtin", progress=False, log=None)
        >>> [p.parent.name + "/" + p.name for p in paths]
        ['0k/qa1.jsonl', '1k/qa1.jsonl']
    """
    from tqdm.auto import tqdm

    settings = BabilongSettings(tasks, lengths, n_samples, seed, split=split)
    say = log or (lambda line: None)
    sources = babi_source if isinstance(babi_source, BabilongSources) else open_sources(
        babi_source, background, seed=seed, split=split)
    if isinstance(sources.babi, str) and sources.babi.startswith("hf:"):
        raise ValueError("babi_source='hf': the published BABILong sets are BABILong data already (load them with "
                         "datasets.load_dataset); make data from a bAbI folder or 'builtin'.")
    out = Path(out_dir)
    plan = [(t, n, out / n / f"{t}.jsonl") for t in settings.tasks for n in settings.lengths]
    existing = [p for p in [out / MANIFEST] + [p for _, _, p in plan] if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace the data set, "
                              "or choose another output folder.")
    say(f"bAbI questions: {sources.babi_description}")
    say(f"background text: {sources.background_description}")
    name = tokenizer_name or getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    files = []
    for task, length, path in plan:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tokens = count = 0
        with tmp.open("w", encoding="utf-8") as f, tqdm(total=settings.n_samples, desc=f"{task} {length}",
                                                        unit="sample", disable=not progress) as bar:
            for sample in iter_samples(task, length, tokenizer, settings, sources):
                _write_sample(f, sample)
                tokens, count = tokens + sample.num_tokens, count + 1
                bar.update(1)
        tmp.replace(path)
        files.append({"task": task, "length": length, "path": str(path.relative_to(out)), "n": count,
                      "mean_tokens": round(tokens / max(count, 1), 1)})
        say(f"{task} {length}: {count} samples, {tokens / max(count, 1):,.0f} context tokens on average -> {path}")
    manifest = {"format": DATA_FORMAT, "fields": ["input", "question", "target", "task", "length", "num_tokens"],
                "tokenizer": str(name), "sources": sources.to_dict(),
                "settings": {"n_samples": settings.n_samples, "seed": seed, "split": split}, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return [p for _, _, p in plan]
