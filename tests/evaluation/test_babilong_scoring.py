"""BABILong answer scoring: labels, first sentence, question labels, qa8 sets, qa19 paths."""

from __future__ import annotations

import pytest

from armt.data.babi import load_babi_task
from armt.evaluation.babilong_scoring import (
    TASK_LABELS,
    accuracy,
    compare_answers,
    exact_match,
    first_sentence,
)


@pytest.mark.parametrize("output, ok", [
    ("kitchen", True),
    ("Kitchen.", True),
    ("  THE KITCHEN  ", True),
    ("Mary is in the kitchen. Before that she was in the garden.", True),   # second sentence cut
    ("Mary is in the kitchen\nQuestion: where is John? garden", True),      # line break ends it
    ("kitchen or garden", False),                                            # two labels
    ("garden", False),
    ("I don't know", False),
    ("", False),
    ("kitchenette", False),                                                  # whole words only
])
def test_single_label_tasks(output, ok):
    assert compare_answers(output, "kitchen", "Where is Mary?", "qa1") is ok


def test_labels_in_the_question_are_ignored():
    question = "Where was Mary before the kitchen?"
    assert compare_answers("She was in the garden before the kitchen.", "garden", question, "qa14") is False
    assert compare_answers("From the school to the kitchen.", "school", question, "qa14")
    # qa5: names and objects in the question are never the answer
    assert compare_answers("Fred gave the football to Jeff", "fred", "Who gave the football to Jeff?", "qa5")
    assert compare_answers("Jeff", "fred", "Who gave the football to Jeff?", "qa5") is False


def test_yes_no_and_counting_do_not_match_inside_words():
    assert compare_answers("None.", "none", "How many objects is Mary carrying?", "qa7")
    assert compare_answers("one", "none", "How many objects is Mary carrying?", "qa7") is False
    assert compare_answers("No, she is not.", "no", "Is Mary in the office?", "qa6")
    assert compare_answers("Not known, north side.", "no", "Is Mary in the office?", "qa6") is False
    assert compare_answers("Maybe", "maybe", "Is Bill in the park?", "qa10")
    assert compare_answers("yes or no", "yes", "Is Bill in the park?", "qa10") is False


@pytest.mark.parametrize("output, target, ok", [
    ("apple, milk", "apple,milk", True),
    ("Milk and apple.", "apple,milk", True),
    ("milk", "apple,milk", False),
    ("apple, milk, football", "apple,milk", False),
    ("nothing", "nothing", True),
    ("Nothing. Maybe the milk.", "nothing", True),
    ("nothing but the milk", "milk", False),
    ("football", "football", True),
])
def test_qa8_sets(output, target, ok):
    assert compare_answers(output, target, "What is Mary carrying?", "qa8") is ok


@pytest.mark.parametrize("output, ok", [
    ("n,w", True), ("N, W", True), ("north, west", True), ("Go n,w.", True),
    ("w,n", False), ("n", False), ("s,n,w", False), ("n,w or e,e", False),
])
def test_qa19_paths(output, ok):
    assert compare_answers(output, "n,w", "How do you go from the bedroom to the garden?", "qa19") is ok


def test_unknown_task_and_explicit_labels():
    with pytest.raises(ValueError, match="labels="):
        compare_answers("red", "red", "What colour?", "qa42")
    assert compare_answers("Red.", "red", "What colour?", "colours", labels=["red", "blue"])


def test_first_sentence_and_exact_match():
    assert first_sentence("Garden! Then kitchen.") == "garden"
    assert exact_match("Hallway.", "hallway") and exact_match("  n,w ", "n,w")
    assert not exact_match("the hallway", "hallway")


def test_accuracy_counts():
    records = [{"target": "yes", "question": "Is Mary in the office?", "task": "qa6"}] * 3
    assert accuracy(["Yes.", "no", "yes, she is"], records) == (2, 3)
    with pytest.raises(ValueError, match="task="):
        accuracy(["yes"], [{"target": "yes", "question": "Q?"}])


def test_labels_cover_real_answers_and_targets_score_right(data_dir):
    if not (data_dir / "babi" / "en").is_dir():
        pytest.skip(f"bAbI files not found at {data_dir / 'babi'}")
    for task, labels in TASK_LABELS.items():
        samples = load_babi_task(task, "test", root=data_dir / "babi")
        parts = {p for s in samples for p in ([s.answer] if task == "qa19" else s.answer.split(","))}
        assert {p.lower() for p in parts} <= labels, task
        wrong = [s for s in samples if not compare_answers(s.answer, s.answer, s.question, task)]
        assert not wrong, (task, wrong[:1])
