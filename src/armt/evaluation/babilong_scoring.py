"""Scoring of BABILong answers: is the task's right label the only one in the first sentence?

A generated answer is right when, among the label words of its task, exactly the target is
found in the answer's first sentence, not counting labels that also occur in the question
(those are never the answer: "Where was Mary before the cinema?"). For qa8, whose answers are
sets like ``"apple,milk"``, the labels found must be exactly the target's. This is BABILong's
rule with two deliberate differences: labels match as whole words, not substrings (BABILong
finds "one" inside "none" and "no" inside "north", which marks right answers wrong), and for
qa19 direction words are read as their letters ("north, west" counts as ``"n,w"``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

# every answer of the bAbI v1.2 train and test files, per task (qa8 sets split into items)
TASK_LABELS: dict[str, frozenset[str]] = {
    "qa1": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa2": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa3": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa4": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa5": frozenset({"apple", "bill", "football", "fred", "jeff", "mary", "milk"}),
    "qa6": frozenset({"no", "yes"}),
    "qa7": frozenset({"none", "one", "three", "two"}),
    "qa8": frozenset({"apple", "football", "milk", "nothing"}),
    "qa9": frozenset({"no", "yes"}),
    "qa10": frozenset({"maybe", "no", "yes"}),
    "qa11": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa12": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa13": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa14": frozenset({"bedroom", "cinema", "kitchen", "office", "park", "school"}),
    "qa15": frozenset({"cat", "mouse", "sheep", "wolf"}),
    "qa16": frozenset({"gray", "green", "white", "yellow"}),
    "qa17": frozenset({"no", "yes"}),
    "qa18": frozenset({"no", "yes"}),
    "qa19": frozenset({f"{a},{b}" for a in "nsew" for b in "nsew" if a != {"n": "s", "s": "n", "e": "w", "w": "e"}[b]}),
    "qa20": frozenset({"bedroom", "bored", "garden", "hungry", "kitchen", "thirsty", "tired"}),
}
SET_TASKS = frozenset({"qa8"})
_DIRECTIONS = {"north": "n", "south": "s", "east": "e", "west": "w"}
_SENTENCE_END = re.compile(r"[.!?\n]")


def first_sentence(output: str) -> str:
    """The answer lower-cased and cut at its first ``.``, ``!``, ``?`` or line break.

    Example:
        >>> first_sentence("  Kitchen. Then Mary went to the garden.")
        'kitchen'
    """
    return _SENTENCE_END.split(output.strip().lower(), maxsplit=1)[0].strip()


def _normalise(text: str, task: str) -> str:
    text = re.sub(r"\s*,\s*", ",", text.lower())
    if task == "qa19":
        text = re.sub(r"\b(north|south|east|west)\b", lambda m: _DIRECTIONS[m.group(1)], text)
    return text


@functools.lru_cache(maxsize=1024)
def _pattern(label: str) -> re.Pattern[str]:
    # a path label like "n,w" must not be part of a longer path such as "s,n,w"
    edge = "a-z0-9," if "," in label else "a-z0-9"
    return re.compile(rf"(?<![{edge}]){re.escape(label)}(?![{edge}])")


def _found(text: str, labels: Iterable[str]) -> set[str]:
    return {label for label in labels if _pattern(label).search(text)}


def task_labels(task: str) -> frozenset[str]:
    """The label words of a task (``"qa1"`` .. ``"qa20"``)."""
    key = str(task).strip().lower()
    if key not in TASK_LABELS:
        raise ValueError(f"task={task!r} has no label set; use one of qa1 .. qa20, or pass labels=... explicitly.")
    return TASK_LABELS[key]


def compare_answers(output: str, target: str, question: str, task: str,
                    labels: Iterable[str] | None = None) -> bool:
    """Whether a generated answer is right, by BABILong's label rule (see the module docstring).

    Args:
        output: the generated text.
        target: the right answer (``"apple,milk"`` for a qa8 set).
        question: the question, whose labels are ignored in the output.
        task: ``"qa1"`` .. ``"qa20"``; picks the labels and whether the target is a set.
        labels: the label words, instead of the task's.

    Example:
        >>> compare_answers("The kitchen.", "kitchen", "Where is Mary?", "qa1")
        True
        >>> compare_answers("kitchen or garden", "kitchen", "Where is Mary?", "qa1")
        False
        >>> compare_answers("Milk and apple.", "apple,milk", "What is Mary carrying?", "qa8")
        True
    """
    task = str(task).strip().lower()
    vocabulary = {label.lower() for label in (task_labels(task) if labels is None else labels)}
    said = _found(_normalise(first_sentence(output), task), vocabulary)
    said -= _found(_normalise(question, task), vocabulary)
    wanted = _normalise(target.strip(), task)
    if task in SET_TASKS:
        return said == {item for item in wanted.split(",") if item}
    return said == {wanted}


# how an answer is judged: BABILong's label rule, or lm-evaluation-harness's substring test
METRICS = ("babilong", "contains")


def contains_target(output: str, target: str) -> bool:
    """lm-evaluation-harness's babilong metric: the target, lower-cased, anywhere in the whole
    generated text (control characters read as line breaks, outer blanks stripped).

    Example:
        >>> contains_target("The most recent location of Mary is Kitchen.", "kitchen")
        True
        >>> contains_target("garden", "kitchen")
        False
    """
    text = re.sub(r"[\x00-\x1f]", "\n", output.strip()).strip()
    return target.strip().lower() in text.lower()


def exact_match(output: str, target: str) -> bool:
    """Equality after stripping, lower-casing and dropping trailing punctuation.

    Example:
        >>> exact_match(" Kitchen. ", "kitchen"), exact_match("the kitchen", "kitchen")
        (True, False)
    """
    def clean(text: str) -> str:
        return " ".join(text.strip().lower().rstrip(".!?,;:'\" ").split())

    return clean(output) == clean(target)


def accuracy(outputs: Iterable[str], records: Iterable[dict], task: str | None = None) -> tuple[int, int]:
    """``(correct, n)`` of outputs against records with ``target``, ``question`` and ``task``.

    Example:
        >>> accuracy(["garden", "office"], [{"target": "garden", "question": "Where is John?", "task": "qa1"},
        ...                                 {"target": "hallway", "question": "Where is Mary?", "task": "qa1"}])
        (1, 2)
    """
    correct = n = 0
    for output, record in zip(outputs, records, strict=True):
        record_task = task or record.get("task")
        if record_task is None:
            raise ValueError("A record has no 'task'; pass task=... to accuracy().")
        correct += compare_answers(output, record["target"], record["question"], record_task)
        n += 1
    return correct, n
