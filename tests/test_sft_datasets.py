"""Text SFT datasets (Alpaca, Dolly, OpenAssistant oasst1): the readers in mmtune.data.formats.readers
and the datasets/*/convert.py scripts, on fixtures laid out like the published files."""
import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mmtune.data.formats.readers import (
    FORMATS,
    convert,
    from_dolly,
    oasst_threads,
    oasst_tree_messages,
    placeholders_in,
    read_json_or_jsonl,
)
from mmtune.data.formats.records import read_records

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
ALPACA = FIXTURES / "alpaca" / "alpaca_data.json"
DOLLY = FIXTURES / "dolly" / "databricks-dolly-15k.jsonl"
OASST = FIXTURES / "oasst1" / "2023-04-12_oasst_ready.messages.jsonl"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


ALPACA_RECORDS = [
    {"id": "alpaca-0", "messages": [
        user("Give three tips for keeping a houseplant alive."),
        assistant("1. Water it only when the top of the soil is dry.\n2. Keep it in bright, indirect light.\n"
                  "3. Repot it when the roots fill the pot.")]},
    {"id": "alpaca-1", "messages": [
        user("Translate the sentence into French.\n\nThe library opens at nine."),
        assistant("La bibliothèque ouvre à neuf heures.")]},
    {"id": "alpaca-2", "messages": [
        user("Classify the animal as a mammal, a bird or a reptile.\n\nGecko"),
        assistant("Reptile")]},
]

DOLLY_RECORDS = [
    {"id": "dolly-0", "messages": [
        user("When was the Eiffel Tower completed?\n\nThe Eiffel Tower is a wrought-iron lattice tower on the "
             "Champ de Mars in Paris. Gustave Eiffel's company built it as the entrance arch of the 1889 "
             "World's Fair, and it was completed in March 1889."),
        assistant("It was completed in March 1889.")],
     "meta": {"category": "closed_qa"}},
    {"id": "dolly-1", "messages": [
        user("Give me three ideas for a rainy Sunday afternoon."),
        assistant("Bake a loaf of bread, start a jigsaw puzzle, or watch an old film.")],
     "meta": {"category": "brainstorming"}},
    {"id": "dolly-2", "messages": [
        user("Which of these are fruits: carrot, apple, potato, pear?"),
        assistant("Apple and pear are fruits; carrot and potato are vegetables.")],
     "meta": {"category": "classification"}},
    {"id": "dolly-3", "messages": [
        user("Summarise the paragraph in one sentence.\n\nHoney bees live in colonies of up to sixty thousand "
             "workers.\nThe workers gather nectar and pollen, build the comb and raise the young, while a "
             "single queen lays the eggs."),
        assistant("A honey bee colony is thousands of workers that gather food, build comb and raise the "
                  "young, and one queen that lays the eggs.")],
     "meta": {"category": "summarization"}},
]

# Message ids of the oasst1 fixture. Tree 1 (en): prompt P1 with answers A2 (rank 0), A1 (rank 1)
# and A7 (failed review); A2 -> P3 (rank 0) -> A5 (rank 0), A4 (rank 1), A6 (deleted); A2 -> P4
# (rank 1, never answered); A1 -> P2 -> A3. Tree 2 (es): Q1 -> B1 (rank 0), B2 (rank 1).
ID = {
    "P1": "c00daf39-4afd-5b10-ab77-3214688134af", "A1": "baa3eb69-5b80-5189-b042-d57c972592c2",
    "P2": "8fabe67e-62ed-562c-9ea3-01a32bcc46e5", "A3": "a50f1f5d-0f0b-50a6-8099-c7838f061904",
    "A2": "4a92414b-2f45-51c2-8baf-461179f84bd4", "P3": "c7f7b678-50f3-5a57-bebe-39c63c227b2e",
    "A4": "60a604ed-6241-5810-a778-3adc3a27341e", "A5": "3b7415f1-f52f-5274-9ee7-8139b53f0e25",
    "A6": "a8441faa-d612-51d2-9bd8-8a0a2ad7695e", "P4": "b13c5312-ccb5-5d8d-9be2-1acf91991f70",
    "A7": "f12134f9-b6d9-5be1-a72c-cdb37e1e3d85", "Q1": "dcd9c9d9-dc1a-5e0b-b97c-4da0274819bd",
    "B1": "78243e7f-98e8-528f-a5ec-dab1ab32d1c0", "B2": "ecfc48b6-5e56-52c4-8744-dbfecc93b32c",
}
CAT = "What is a good name for a black cat?"
MIDNIGHT = "How about Midnight? It suits a black coat and is easy to call out."
SHORTER = "Can you suggest something shorter?"
EN_META = {"message_tree_id": ID["P1"], "lang": "en"}
ES_META = {"message_tree_id": ID["Q1"], "lang": "es"}
OASST_BEST_EN = {"id": ID["A5"], "messages": [user(CAT), assistant(MIDNIGHT), user(SHORTER),
                                              assistant("Nox, which is Latin for night.")], "meta": EN_META}
OASST_ALL_EN = [
    OASST_BEST_EN,
    {"id": ID["A4"], "messages": [user(CAT), assistant(MIDNIGHT), user(SHORTER), assistant("Ink.")],
     "meta": EN_META},
    {"id": ID["A3"], "messages": [
        user(CAT), assistant("Shadow is a classic choice."), user("Why is it a classic?"),
        assistant("A black cat moves quietly and is hard to see at night, like a shadow.")], "meta": EN_META},
]
OASST_ES = [
    {"id": ID["B1"], "messages": [user("¿Cuál es la capital de Francia?"),
                                  assistant("La capital de Francia es París.")], "meta": ES_META},
    {"id": ID["B2"], "messages": [user("¿Cuál es la capital de Francia?"), assistant("París.")], "meta": ES_META},
]


def run(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(REPO / "datasets" / script / "convert.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fixture_messages() -> list[dict]:
    return [json.loads(line) for line in OASST.read_text(encoding="utf-8").splitlines()]


def as_trees(messages: list[dict]) -> list[dict]:
    """The fixture's messages nested as in a *.trees.jsonl file (null fields left out, as the
    tree exports may do)."""
    nodes = {m["message_id"]: {k: v for k, v in m.items()
                               if v is not None and k not in ("parent_id", "message_tree_id", "tree_state")}
             for m in messages}
    trees = []
    for m in messages:
        node = nodes[m["message_id"]]
        if m["parent_id"] is None:
            trees.append({"message_tree_id": m["message_tree_id"], "tree_state": m["tree_state"], "prompt": node})
        else:
            nodes[m["parent_id"]].setdefault("replies", []).append(node)
    return trees


# --- readers ---------------------------------------------------------------------------------

def test_from_dolly():
    sample = {"instruction": "Who wrote it?", "context": "Dune is a novel by Frank Herbert.",
              "response": "Frank Herbert.", "category": "closed_qa"}
    assert from_dolly(sample, "d.jsonl:7") == {
        "id": "d.jsonl:7",
        "messages": [user("Who wrote it?\n\nDune is a novel by Frank Herbert."), assistant("Frank Herbert.")],
        "meta": {"category": "closed_qa"},
    }
    assert from_dolly({"instruction": "Hi", "context": "", "response": "Hello"}, "d.jsonl:8") == {
        "id": "d.jsonl:8", "messages": [user("Hi"), assistant("Hello")]}


@pytest.mark.parametrize("sample, message", [
    ({"instruction": "x", "context": ""}, "d.jsonl:3: missing field 'response'"),
    ({"instruction": "x", "context": 5, "response": "y"}, "d.jsonl:3: field 'context' must be str, got int"),
    ({"instruction": "x", "response": "y", "category": ["qa"]}, "d.jsonl:3: field 'category' must be str, got list"),
    ({"instruction": "see <video>", "response": "y"},
     "d.jsonl:3: 1 <video> placeholder(s) in the messages but 0 file(s) in 'videos'"),
])
def test_from_dolly_errors_name_where_and_field(sample, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_dolly(sample, "d.jsonl:3")


def test_dolly_in_formats_and_convert():
    assert FORMATS["dolly"] is from_dolly
    got = list(convert(DOLLY, "dolly"))
    assert got == [{**r, "id": f"{DOLLY}:{i + 1}"} for i, r in enumerate(DOLLY_RECORDS)]


def test_alpaca_fixture_via_convert():
    got = list(convert(ALPACA, "alpaca"))
    assert got == [{**r, "id": f"{ALPACA}[{i}]"} for i, r in enumerate(ALPACA_RECORDS)]


def test_placeholders_in():
    assert placeholders_in("use the <video> tag", "no", "<image><audio>") == ["<video>", "<image>", "<audio>"]
    assert placeholders_in("<img>", "<video controls>") == []


def test_read_gzipped_jsonl_and_bad_gzip(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n\n{"a": 2\n')
    it = read_json_or_jsonl(path)
    assert next(it) == (f"{path}:1", {"a": 1})
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: malformed JSON")):
        next(it)
    fake = tmp_path / "e.jsonl.gz"
    fake.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match=re.escape(f"{fake}: not a readable gzip file")):
        list(read_json_or_jsonl(fake))
    with pytest.raises(ValueError, match=re.escape("unsupported file type '.csv.gz'")):
        list(read_json_or_jsonl(tmp_path / "d.csv.gz"))


# --- oasst_threads ---------------------------------------------------------------------------

def test_oasst_best_thread_english():
    stats = Counter()
    got = list(oasst_threads(read_json_or_jsonl(OASST), str(OASST), stats=stats))
    assert got == [OASST_BEST_EN]
    assert stats == Counter({"messages": 14, "trees": 2, "threads": 1, "skipped: other language": 1,
                             "skipped: below a skipped message": 2, "skipped: deleted": 1,
                             "skipped: failed review": 1})


def test_oasst_path_counts():
    messages = fixture_messages()
    assert list(oasst_threads(messages, "m", best_only=False)) == OASST_ALL_EN
    assert list(oasst_threads(messages, "m", lang="es", best_only=False)) == OASST_ES
    assert list(oasst_threads(messages, "m", lang=None)) == [OASST_BEST_EN, OASST_ES[0]]
    assert list(oasst_threads(messages, "m", lang=None, best_only=False)) == OASST_ALL_EN + OASST_ES
    assert list(oasst_threads(messages, "m", lang="fr")) == []


def test_oasst_input_order_does_not_matter():
    messages = fixture_messages()
    shuffled = messages[::-1]  # every child before its parent
    got = list(oasst_threads(shuffled, "m", lang=None, best_only=False))
    assert sorted(got, key=lambda r: r["id"]) == sorted(OASST_ALL_EN + OASST_ES, key=lambda r: r["id"])


def test_oasst_trees_shape_gives_the_same_threads(tmp_path):
    trees = as_trees(fixture_messages())
    assert len(trees) == 2 and "parent_id" not in trees[0]["prompt"]
    path = tmp_path / "2023-04-12_oasst_ready.trees.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in trees)
    got = list(oasst_threads(read_json_or_jsonl(path), str(path), lang=None, best_only=False))
    assert got == OASST_ALL_EN + OASST_ES
    flat = list(oasst_tree_messages(trees[1], "t.jsonl:2"))
    assert [(w, m["message_id"], m["parent_id"]) for w, m in flat] == [
        ("t.jsonl:2: prompt", ID["Q1"], None),
        ("t.jsonl:2: prompt.replies[0]", ID["B1"], ID["Q1"]),
        ("t.jsonl:2: prompt.replies[1]", ID["B2"], ID["Q1"])]


def test_oasst_null_ranks_come_last_and_ties_keep_order():
    rows = [{"message_id": "p", "parent_id": None, "role": "prompter", "text": "Q", "lang": "en"},
            {"message_id": "a", "parent_id": "p", "role": "assistant", "text": "A", "lang": "en", "rank": None},
            {"message_id": "b", "parent_id": "p", "role": "assistant", "text": "B", "lang": "en", "rank": 1},
            {"message_id": "c", "parent_id": "p", "role": "assistant", "text": "C", "lang": "en", "rank": None}]
    assert [r["id"] for r in oasst_threads(rows, "m", best_only=False)] == ["b", "a", "c"]
    assert [r["id"] for r in oasst_threads(rows, "m")] == ["b"]


def test_oasst_unanswered_trees_placeholders_and_orphans():
    rows = [{"message_id": "p1", "parent_id": None, "role": "prompter", "text": "Only a prompt", "lang": "en"},
            {"message_id": "p2", "parent_id": None, "role": "prompter", "text": "Q", "lang": "en"},
            {"message_id": "a2", "parent_id": "p2", "role": "assistant", "text": "Use the <video> tag.",
             "lang": "en", "rank": 0},
            {"message_id": "b2", "parent_id": "p2", "role": "assistant", "text": "Use a video tag.",
             "lang": "en", "rank": 1},
            {"message_id": "x", "parent_id": "gone", "role": "assistant", "text": "orphan", "lang": "en"}]
    stats = Counter()
    got = list(oasst_threads(rows, "m", stats=stats))
    assert got == [{"id": "b2", "messages": [user("Q"), assistant("Use a video tag.")],
                    "meta": {"message_tree_id": "p2", "lang": "en"}}]
    assert stats == Counter({"messages": 5, "trees": 2, "threads": 1, "trees without an answer": 1,
                             "skipped: media placeholder in text": 1, "skipped: parent missing": 1})


def test_oasst_errors_name_file_and_line(tmp_path):
    lines = OASST.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "m.jsonl"
    bad.write_text("\n".join(lines[:2] + ['{"message_id": "z", "parent_id": null, "role": "prompter"}']),
                   encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: missing field 'text'")):
        list(oasst_threads(read_json_or_jsonl(bad), str(bad)))
    bad.write_text("\n".join(lines[:2] + [lines[1]]), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: message_id '{ID['A1']}' already seen at {bad}:2")):
        list(oasst_threads(read_json_or_jsonl(bad), str(bad)))
    row = json.loads(lines[1])
    bad.write_text("\n".join(lines[:2] + [json.dumps({**row, "message_id": "n", "parent_id": row["message_id"]})]),
                   encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: 'assistant' message replies to a 'assistant' message")):
        list(oasst_threads(read_json_or_jsonl(bad), str(bad)))
    rows = [{"message_id": "a", "parent_id": None, "role": "assistant", "text": "x", "lang": "en"}]
    with pytest.raises(ValueError, match=re.escape("m[0]: a tree must start with a 'prompter' message")):
        list(oasst_threads(rows, "m"))
    rows = [{"message_id": "a", "parent_id": None, "role": "user", "text": "x"}]
    with pytest.raises(ValueError, match=re.escape("m[0]: field 'role' is 'user'; expected one of ['assistant', 'prompter']")):
        list(oasst_threads(rows, "m"))


# --- scripts ---------------------------------------------------------------------------------

def test_alpaca_script(tmp_path):
    out = tmp_path / "out" / "alpaca.jsonl"
    res = run("alpaca", "--input", ALPACA, "--out", out)
    assert res.returncode == 0, res.stderr
    assert read(out) == ALPACA_RECORDS
    records, skipped = read_records(out)
    assert [r.id for r in records] == ["alpaca-0", "alpaca-1", "alpaca-2"] and skipped == []
    assert "read 3 items" in res.stdout and "skipped 0 items" in res.stdout and "wrote 3 records" in res.stdout


def test_dolly_script_limit_and_placeholder_skip(tmp_path):
    out = tmp_path / "dolly.jsonl"
    res = run("dolly", "--input", DOLLY, "--out", out)
    assert res.returncode == 0, res.stderr
    assert read(out) == DOLLY_RECORDS
    records, _ = read_records(out)
    assert [r.meta["category"] for r in records] == ["closed_qa", "brainstorming", "classification", "summarization"]
    assert "wrote 4 records" in res.stdout and "  closed_qa: 1\n" in res.stdout

    src = tmp_path / "databricks-dolly-15k.jsonl"
    lines = DOLLY.read_text(encoding="utf-8").splitlines()
    tagged = json.dumps({"instruction": "What does the <video> element do?", "context": "",
                         "response": "It embeds a video player.", "category": "open_qa"})
    src.write_text("\n".join([lines[0], tagged, lines[1], lines[2]]) + "\n", encoding="utf-8")
    res = run("dolly", "--input", src, "--out", out, "--limit", 3)
    assert res.returncode == 0, res.stderr
    assert read(out) == [DOLLY_RECORDS[0], {**DOLLY_RECORDS[1], "id": "dolly-2"}]
    assert f"left out: {src}:2: media placeholder <video> in the text" in res.stderr
    assert "read 3 items" in res.stdout and "skipped 1 items" in res.stdout and "wrote 2 records" in res.stdout


def test_dolly_script_malformed_line_names_file_and_line(tmp_path):
    src = tmp_path / "databricks-dolly-15k.jsonl"
    lines = DOLLY.read_text(encoding="utf-8").splitlines()
    src.write_text("\n".join([lines[0], lines[1], '{"instruction": "x", "context": ""', lines[3]]) + "\n")
    out = tmp_path / "dolly.jsonl"
    res = run("dolly", "--input", src, "--out", out)
    assert res.returncode == 1
    assert f"error: {src}:3: malformed JSON" in res.stderr
    assert not out.exists()


def test_oasst_script_best_and_all_paths(tmp_path):
    out = tmp_path / "oasst_en.jsonl"
    res = run("oasst1", "--input", OASST, "--out", out)
    assert res.returncode == 0, res.stderr
    assert read(out) == [OASST_BEST_EN]
    assert "read 14 messages in 2 trees" in res.stdout
    assert "skipped 5 messages\n  below a skipped message: 2\n  deleted: 1\n  failed review: 1\n" \
           "  other language: 1\n" in res.stdout
    assert "wrote 1 records (best thread per tree, lang en)" in res.stdout

    res = run("oasst1", "--input", OASST, "--out", out, "--lang", "all", "--all-paths")
    assert res.returncode == 0, res.stderr
    assert read(out) == OASST_ALL_EN + OASST_ES
    records, skipped = read_records(out)
    assert len(records) == 5 and skipped == []
    assert records[0].meta == EN_META and [m["role"] for m in records[0].messages] == ["user", "assistant"] * 2
    assert "wrote 5 records (every thread, lang all)" in res.stdout

    res = run("oasst1", "--input", OASST, "--out", out, "--lang", "all", "--all-paths", "--limit", 2)
    assert res.returncode == 0, res.stderr
    assert read(out) == OASST_ALL_EN[:2]
    assert "stopped at --limit 2" in res.stdout


def test_oasst_script_errors(tmp_path):
    bad = tmp_path / "m.jsonl"
    lines = OASST.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines[:3] + ["{not json"]) + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    res = run("oasst1", "--input", bad, "--out", out, "--limit", 1)
    assert res.returncode == 1
    assert f"error: {bad}:4: malformed JSON" in res.stderr
    assert not out.exists()
    res = run("oasst1", "--input", tmp_path / "nope.jsonl", "--out", out)
    assert res.returncode == 2 and "is not a file" in res.stderr
