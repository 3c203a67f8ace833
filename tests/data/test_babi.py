"""bAbI parsing on the real files, samples per question, the generator and the HF reader's errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from armt.data.babi import (
    BabiSample,
    babi_samples,
    find_babi_file,
    generate_babi,
    load_babi_task,
    load_babilong_hf,
    normalize_task,
    parse_babi,
)



@pytest.fixture
def babi_root(data_dir) -> Path:
    BABI = data_dir / "babi"
    if not (BABI / "en").is_dir():
        pytest.skip(f"bAbI files not found at {BABI} (the shared data folder is missing)")
    return BABI


def question_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if "\t" in line or "|" in line)


def test_qa1_test_file_stories_and_samples(babi_root):
    path = find_babi_file("qa1", "test", babi_root)
    stories = parse_babi(path)
    assert stories[0].task == "qa1"
    # qa1 stories: 10 facts and 5 questions, IDs 1..15
    assert len(stories) == 200
    assert all([line.line_id for line in s.lines] == list(range(1, 16)) for s in stories)
    samples = babi_samples(stories)
    assert len(samples) == 1000
    first = samples[0]
    assert first.facts == ("John travelled to the hallway.", "Mary journeyed to the bathroom.")
    assert (first.question, first.answer, first.supporting_facts) == (
        "Where is John?", "hallway", ("John travelled to the hallway.",))
    # the 5th question of the first story sees all 10 facts of that story and none of the next
    assert len(samples[4].facts) == 10 and samples[5].story_id == 1 and len(samples[5].facts) == 2
    for s in samples:
        assert s.answer in s.supporting_facts[0]


@pytest.mark.parametrize("task", [f"qa{i}" for i in range(1, 21)])
def test_every_task_one_sample_per_question(babi_root, task):
    path = find_babi_file(task, "test", babi_root)
    samples = load_babi_task(task, "test", root=babi_root)
    assert len(samples) == question_lines(path) == 1000
    assert {s.task for s in samples} == {task}
    for s in samples:
        assert s.facts and all(not f.endswith("?") for f in s.facts)
        assert s.question.endswith("?") and s.answer
        assert all(0 <= i < len(s.facts) for i in s.supporting)


def test_supporting_ids_map_to_fact_positions(babi_root):
    # qa2: "Where is the milk?  hallway  1 4" -> the grab (line 1) and the move (line 4)
    samples = load_babi_task("qa2", "test", root=babi_root)
    assert samples[0].supporting_facts == ("Mary got the milk there.", "Mary travelled to the hallway.")
    # qa2's third question cites line 9, the 7th fact (lines 5 and 8 are questions)
    assert samples[2].supporting == (6, 5)
    assert samples[2].supporting_facts == ("John put down the football.", "John went to the hallway.")
    for s in samples:
        obj = re.search(r"the (\w+)\?", s.question).group(1)
        assert any(obj in fact for fact in s.supporting_facts)


def test_qa8_sets_and_qa19_paths_are_kept_as_written(babi_root):
    answers8 = {s.answer for s in load_babi_task("qa8", "test", root=babi_root)}
    assert "nothing" in answers8 and any("," in a for a in answers8)
    answers19 = {s.answer for s in load_babi_task("qa19", "test", root=babi_root)}
    assert all(re.fullmatch(r"[nsew],[nsew]", a) for a in answers19)


def test_en10k_and_test_fallback(babi_root):
    assert len(load_babi_task("qa1", "train", babi_root, variant="en-10k")) == 10000
    assert find_babi_file("qa2", "test", babi_root, "en-10k").parent.name == "en"
    with pytest.raises(FileNotFoundError, match="en-10k holds only some tasks"):
        find_babi_file("qa3", "train", babi_root, "en-10k")
    # the variant folder itself also works as root
    assert find_babi_file("qa3", "train", babi_root / "en").name.startswith("qa3_")


def test_task_names_and_root_errors(monkeypatch, tmp_path):
    assert normalize_task(7) == normalize_task("QA7") == "qa7"
    with pytest.raises(ValueError, match="qa1 .. qa20"):
        normalize_task("qa21")
    monkeypatch.delenv("ARMT_BABI_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="ARMT_BABI_DIR"):
        load_babi_task("qa1")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_babi_task("qa1", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        find_babi_file("qa1", "dev", tmp_path)


def test_parse_lines_separators_and_errors():
    lines = ["1 Mary went to the office.", "2 Where is Mary?\toffice\t1",
             "1 John moved to the garden.", "2 Where is John? |garden|1"]
    stories = parse_babi(lines, task="qa1")
    assert [len(s.lines) for s in stories] == [2, 2]
    assert [s.answer for s in babi_samples(stories)] == ["office", "garden"]
    with pytest.raises(ValueError, match="line 2: expected 'ID text'"):
        parse_babi(["1 A.", "Where?\tx\t1"])
    with pytest.raises(ValueError, match="ID 4 follows 1"):
        parse_babi(["1 A.", "4 B."])
    with pytest.raises(ValueError, match="not facts before the question"):
        babi_samples(parse_babi(["1 A.", "2 Q?\tx\t3", "3 B."]))
    with pytest.raises(ValueError, match="points outside facts"):
        BabiSample("qa1", ("A.",), "Q?", "x", (1,))


def test_hf_reader_offline_error(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read the variables at import, which may already have happened
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(RuntimeError, match="make_dataset"):
        load_babilong_hf("qa1", "1k", cache_dir=str(tmp_path))


# --- generator, checked by an independent reading of the facts ---------------------------

MOVE = re.compile(r"(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\.")
GRAB = re.compile(r"(\w+) (?:got|grabbed|picked up|took) the (\w+) there\.")
DROP = re.compile(r"(\w+) (?:dropped|put down|discarded|left) the (\w+)\.")
GIVE = re.compile(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.")


def replay(facts):
    """Place of each person and of each object after the facts, and each object's places."""
    person, holder, lies, visits = {}, {}, {}, {}

    def place_of(obj):
        return person.get(holder[obj]) if holder.get(obj) else lies.get(obj)

    for fact in facts:
        for pattern, kind in ((MOVE, "move"), (GRAB, "grab"), (DROP, "drop"), (GIVE, "give")):
            m = pattern.fullmatch(fact)
            if m:
                break
        assert m, fact
        if kind == "move":
            person[m.group(1)] = m.group(2)
        elif kind == "grab":
            holder[m.group(2)] = m.group(1)
        elif kind == "drop":
            lies[m.group(2)], holder[m.group(2)] = person[m.group(1)], None
        else:
            assert holder[m.group(2)] == m.group(1)
            holder[m.group(2)] = m.group(3)
        for obj in holder:
            where = place_of(obj)
            if where and (not visits.get(obj) or visits[obj][-1] != where):
                visits.setdefault(obj, []).append(where)
    return person, {o: place_of(o) for o in holder}, visits


def test_generated_qa1_answer_is_last_place_of_person():
    samples = generate_babi("qa1", 200, seed=3)
    assert len(samples) == 200
    for s in samples:
        name = re.fullmatch(r"Where is (\w+)\?", s.question).group(1)
        last = [m.group(2) for m in map(MOVE.fullmatch, s.facts) if m and m.group(1) == name][-1]
        assert s.answer == last
        assert MOVE.fullmatch(s.supporting_facts[0]).group(1) == name


def test_generated_qa2_and_qa3_answers_match_a_replay():
    for s in generate_babi("qa2", 150, seed=1):
        obj = re.fullmatch(r"Where is the (\w+)\?", s.question).group(1)
        assert replay(s.facts)[1][obj] == s.answer
    for s in generate_babi("qa3", 150, seed=2):
        obj, now = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", s.question).groups()
        visits = replay(s.facts)[2][obj]
        assert visits[-1] == now and visits.count(now) == 1 and visits[-2] == s.answer


def test_generated_qa4_and_qa5_answers():
    opposite = {"north": "south", "south": "north", "east": "west", "west": "east"}
    for s in generate_babi("qa4", 100, seed=0):
        triples = [re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", f).groups() for f in s.facts]
        triples += [(y, opposite[d], x) for x, d, y in triples]
        m = re.fullmatch(r"What is (\w+) of the (\w+)\?", s.question)
        if m:
            assert [x for x, d, y in triples if (d, y) == m.groups()] == [s.answer]
        else:
            x, d = re.fullmatch(r"What is the (\w+) (\w+) of\?", s.question).groups()
            assert [b for a, e, b in triples if (a, e) == (x, d)] == [s.answer]
    for s in generate_babi("qa5", 150, seed=0):
        gives = [m.groups() for m in map(GIVE.fullmatch, s.facts) if m]
        m = re.fullmatch(r"What did (\w+) give to (\w+)\?", s.question)
        if m:
            assert [o for g, o, r in gives if (g, r) == m.groups()][-1] == s.answer
        m = re.fullmatch(r"Who received the (\w+)\?", s.question)
        if m:
            assert [r for g, o, r in gives if o == m.group(1)][-1] == s.answer
        replay(s.facts)  # every give is by the object's holder


def test_generator_deterministic_and_checked():
    assert generate_babi("qa2", 30, seed=5) == generate_babi("qa2", 30, seed=5)
    assert generate_babi("qa2", 30, seed=5) != generate_babi("qa2", 30, seed=6)
    assert generate_babi("qa5", 0) == []
    with pytest.raises(ValueError, match="load_babi_task"):
        generate_babi("qa6", 3)
    with pytest.raises(ValueError, match="n_samples"):
        generate_babi("qa1", -1)
