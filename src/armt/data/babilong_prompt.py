"""How a BABILong sample is laid out in tokens: context, question and answer template."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armt.data.background import clean_sentence

from ..checks import InputTypeError

# where a sample's question sits: after the context's last partial segment, cut into segments with
# it ("shared", as one input), or in a segment of its own after the whole context ("alone")
QUESTION_SEGMENTS = ("shared", "alone")


def check_question_segment(value: str) -> str:
    """``value`` if it is one of :data:`QUESTION_SEGMENTS`, else a ``ValueError`` naming them.

    Example:
        >>> check_question_segment("alone")
        'alone'
    """
    if value not in QUESTION_SEGMENTS:
        raise ValueError(f"question_segment={value!r} is unknown; use one of {QUESTION_SEGMENTS}.")
    return value

Tokenizer = Callable[..., Any]


def token_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids on its own, without special tokens."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class BabilongPrompt:
    """How a BABILong sample becomes tokens, in evaluation and in training alike.

    Training sequences are ``[bos][context][query][answer]``; evaluation generates after
    ``[bos][context][query]``. The context ids are the sample's own, the query is
    ``question_prefix + question + answer_prefix``, the answer ``target_prefix + target`` and
    EOS, each tokenized on its own: ``...<context>\\nWhere is Mary?\\nAnswer: kitchen<eos>``.

    Args:
        question_prefix: text between the context and the question.
        answer_prefix: text after the question, where generation starts: plain text that any
            tokenizer encodes and a pretrained model reads as a cue. The official ARMT recipe
            puts the first token of ``"GEN"`` there (``answer_prefix="GEN", target_prefix=""``).
        target_prefix: text before the target (a space: ``"Answer: kitchen"`` as in prose).
        add_bos: start with the BOS token; ``None`` does as the tokenizer does with
            ``add_special_tokens=True`` (Llama adds it, GPT-2 does not).
        add_eos: end training sequences with EOS, so the model learns to stop.
        preamble: text between BOS and the context: an instruction and worked examples, as the
            BABILong benchmark and lm-evaluation-harness prompt a model
            (:meth:`from_harness_task` builds it from a harness task file).

    Example:
        >>> class Chars:  # one token per character, BOS 1 never added
        ...     bos_token_id, eos_token_id = 1, 2
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[ord(c) for c in t] for t in texts]}
        >>> prompt = BabilongPrompt()
        >>> prompt.query_text("Where is Mary?")
        '\\nWhere is Mary?\\nAnswer:'
        >>> ids, start = prompt.example_ids(Chars(), [ord(c) for c in "Mary went home."], "Where is Mary?", "home")
        >>> "".join(map(chr, ids[start:-1])), ids[-1]
        (' home', 2)
        >>> prompt.cut_answer(" home\\nWhere is John?")
        'home'
    """

    question_prefix: str = "\n"
    answer_prefix: str = "\nAnswer:"
    target_prefix: str = " "
    add_bos: bool | None = None
    add_eos: bool = True
    preamble: str = ""

    def __post_init__(self) -> None:
        for name in ("question_prefix", "answer_prefix", "target_prefix", "preamble"):
            if not isinstance(getattr(self, name), str):
                raise InputTypeError(f"{name} must be a string, got {getattr(self, name)!r}; use '' for none.")
        if self.add_bos not in (None, True, False) or self.add_eos not in (True, False):
            raise InputTypeError(f"add_bos must be None, True or False and add_eos True or False, "
                            f"got add_bos={self.add_bos!r}, add_eos={self.add_eos!r}.")

    def query_text(self, question: str) -> str:
        """The text that follows the context: the question between its prefixes."""
        return f"{self.question_prefix}{clean_sentence(question)}{self.answer_prefix}"

    def prefix_ids(self, tokenizer: Tokenizer) -> list[int]:
        """``[bos]`` or ``[]``: what comes before the context (see ``add_bos``)."""
        bos = getattr(tokenizer, "bos_token_id", None)
        if self.add_bos is False or (bos is None and self.add_bos is None):
            return []
        if bos is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token; use add_bos=None or False.")
        if self.add_bos is None:
            plain = tokenizer(["x"], add_special_tokens=False)["input_ids"][0]
            special = tokenizer(["x"], add_special_tokens=True)["input_ids"][0]
            return [bos] if special[:1] == [bos] and plain[:1] != [bos] else []
        return [bos]

    def head_ids(self, tokenizer: Tokenizer) -> list[int]:
        """Everything before the context: :meth:`prefix_ids` and the preamble's tokens."""
        head = self.prefix_ids(tokenizer)
        return head + token_ids(tokenizer, [self.preamble])[0] if self.preamble else head

    @classmethod
    def from_harness_task(cls, path: str | os.PathLike, num_fewshot: int | None = None) -> BabilongPrompt:
        """The layout of an lm-evaluation-harness BABILong task file (``babilong_qa1.yaml``, or
        armt's ``armt_babilong_qa1.yaml``): its description and its ``num_fewshot`` examples
        (``input``, newline, question, space, target; two newlines after each) before the
        context, a newline before the question and nothing after it. Reads the file (and the one
        it includes) as data: its ``!function`` lines are not run.

        Example:
            >>> import tempfile, pathlib
            >>> f = pathlib.Path(tempfile.mkdtemp()) / "t.yaml"
            >>> _ = f.write_text("description: Answer.\\nnum_fewshot: 1\\nprocess_results: !function u.p\\n"
            ...                  "fewshot_config:\\n  samples:\\n    - {input: 'A went home.', question: 'Where is A?', "
            ...                  "target: home}\\n")
            >>> p = BabilongPrompt.from_harness_task(f)
            >>> p.preamble, p.query_text("Where is B?")
            ('Answer.A went home.\\nWhere is A? home\\n\\n', '\\nWhere is B?')
        """
        import yaml

        class _Loader(yaml.SafeLoader):
            pass

        # the harness's own tags name code; here they are only strings
        _Loader.add_multi_constructor("!", lambda loader, tag, node: f"{tag} {loader.construct_scalar(node)}")
        config = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader) or {}
        if config.get("include"):  # the harness's tasks share settings through an included file
            config = {**yaml.load((Path(path).parent / config["include"]).read_text(encoding="utf-8"),
                                  Loader=_Loader), **config}
        if num_fewshot is None:
            num_fewshot = int(config.get("num_fewshot", 0) or 0)
        samples = (config.get("fewshot_config") or {}).get("samples") or []
        if isinstance(samples, str) or len(samples) < num_fewshot:
            raise ValueError(f"{path} lists {0 if isinstance(samples, str) else len(samples)} fixed few-shot "
                             f"samples, fewer than num_fewshot={num_fewshot}; pass num_fewshot=0 or a task file "
                             "whose fewshot_config lists its samples.")
        delimiter = config.get("target_delimiter", " ")
        shots = "".join(f"{str(x['input']).strip()}\n{str(x['question']).strip()}{delimiter}{x['target']}\n\n"
                        for x in samples[:num_fewshot])
        return cls(question_prefix="\n", answer_prefix="", preamble=str(config.get("description", "")) + shots)

    def query_ids(self, tokenizer: Tokenizer, question: str) -> list[int]:
        """Token ids of :meth:`query_text`; generation starts after them."""
        return token_ids(tokenizer, [self.query_text(question)])[0]

    def answer_ids(self, tokenizer: Tokenizer, target: str) -> list[int]:
        """Token ids of the answer in a training sequence (EOS last with ``add_eos``)."""
        ids = token_ids(tokenizer, [f"{self.target_prefix}{target.strip()}"])[0]
        eos = getattr(tokenizer, "eos_token_id", None)
        if self.add_eos and eos is None:
            raise ValueError("add_eos=True but the tokenizer has no EOS token; set one or use add_eos=False.")
        return ids + [eos] if self.add_eos else ids

    def example_ids(self, tokenizer: Tokenizer, context_ids: Sequence[int], question: str,
                    target: str) -> tuple[list[int], int]:
        """A whole training sequence and the position of its first answer token (the loss
        goes on the answer: ``labels_mask[start - 1:-1]`` in the official convention)."""
        head = self.head_ids(tokenizer) + list(context_ids) + self.query_ids(tokenizer, question)
        return head + self.answer_ids(tokenizer, target), len(head)

    @staticmethod
    def cut_answer(text: str) -> str:
        """The generated answer up to its first line break (leading blanks dropped)."""
        return text.lstrip().split("\n", 1)[0].strip()
