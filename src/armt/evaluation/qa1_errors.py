"""What a wrong qa1 answer was. bAbI's first task asks where a person is after a story of moves;
a model that has not learned to tie each person to their latest place answers with a shortcut
instead, and naming the shortcut says what the model (or its memory) did not keep: the place of
the story's last sentence (recency), a place the person left earlier (order), or another
person's place (who is who)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

KINDS = ("correct", "last sentence", "earlier place of the person", "another person's place",
         "place not in the story", "no place")


def _place(fact: str) -> str:
    # qa1 facts all end with the place: "Mary moved to the bathroom."
    return fact.strip().rstrip(".").split()[-1].lower()


def qa1_error_kind(facts: Sequence[str], question: str, target: str, answer: str) -> str:
    """One of :data:`KINDS` for ``answer`` to a qa1 ``question`` about ``facts``.

    ``answer`` is the scored answer (one word; empty when the model gave none). A wrong answer
    counts as the first of these that fits: the last sentence's place, an earlier place of the
    person asked about, another person's place, a place that is not in the story.

    Example:
        >>> facts = ["Mary went to the kitchen.", "John went to the garden.", "Mary moved to the office.",
        ...          "Sandra went to the hallway."]
        >>> [qa1_error_kind(facts, "Where is Mary?", "office", a)
        ...  for a in ("office", "hallway", "kitchen", "garden", "bedroom", "")]
        ['correct', 'last sentence', 'earlier place of the person', "another person's place", 'place not in the story', 'no place']
    """
    answer = answer.strip().strip(".").lower()
    if answer == target.strip().lower():
        return "correct"
    if not answer:
        return "no place"
    if facts and answer == _place(facts[-1]):
        return "last sentence"
    person = question.strip().rstrip("?").split()[-1]
    if answer in {_place(f) for f in facts if f.split()[0] == person}:
        return "earlier place of the person"
    if answer in {_place(f) for f in facts}:
        return "another person's place"
    return "place not in the story"


def count_qa1_errors(cases: Iterable[tuple[Sequence[str], str, str, str]]) -> dict[str, int]:
    """Counts of :data:`KINDS` over ``(facts, question, target, answer)`` cases, in that order.

    Example:
        >>> count_qa1_errors([(["John went to the garden."], "Where is John?", "garden", "garden")])["correct"]
        1
    """
    counts = Counter(qa1_error_kind(*case) for case in cases)
    return {kind: counts[kind] for kind in KINDS}
