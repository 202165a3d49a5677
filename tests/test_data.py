"""Reading tasks (errors name file, line and field), prompt formats, labels and collators."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab.config import validate
from peftlab.data.collators import CausalLMCollator
from peftlab.data.sources import load_splits
from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat, encode
from peftlab.errors import DataError

from conftest import compose


def data_cfg(path, *extra):
    return validate(compose(["data=custom", f"data.path={path}", *extra])).data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]


def test_builtin_dates_task_has_three_disjoint_splits():
    splits = load_splits(validate(compose()).data)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "val": 64, "test": 128}
    seen = [{r["response"] for r in rows} for rows in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_single_file_is_split_by_fractions(tmp_path):
    cfg = data_cfg(write_jsonl(tmp_path / "d.jsonl", ROWS), "data.val_fraction=0.1", "data.test_fraction=0.2")
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"val": 2, "test": 4, "train": 14}
    assert load_splits(cfg) == splits  # seeded


def test_folder_of_split_files_and_csv(tmp_path):
    import csv

    write_jsonl(tmp_path / "train.jsonl", ROWS)
    with open(tmp_path / "validation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "response"])
        w.writeheader()
        w.writerows(ROWS[:3])
    write_jsonl(tmp_path / "test.jsonl", ROWS[:5])
    splits = load_splits(data_cfg(tmp_path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "val": 3, "test": 5}


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_json_and_parquet_files(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"data": ROWS}))  # a list of records, here under one key
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    splits = load_splits(data_cfg(path, "data.val_fraction=0.1", "data.test_fraction=0.1"))
    assert {k: len(v) for k, v in splits.items()} == {"val": 2, "test": 2, "train": 16}
    assert sorted(r["prompt"] for rows in splits.values() for r in rows) == sorted(r["prompt"] for r in ROWS)


def test_field_mapping(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    cfg = data_cfg(write_jsonl(tmp_path / "qa.jsonl", rows), "data.prompt_field=question",
                   "data.response_field=answer")
    from peftlab.data.sources import WHERE

    row = load_splits(cfg)["train"][0]
    assert row.keys() == {"question", "answer", WHERE} and row[WHERE].startswith(f"{tmp_path / 'qa.jsonl'} line ")


@pytest.mark.parametrize("case,message", [
    ("missing_file", "data.path: no such file or folder: {dir}/nope.jsonl"),
    ("malformed", "{dir}/bad.jsonl line 3: malformed JSON"),
    ("missing_field", "{dir}/nofield.jsonl line 2: missing field 'response' (data.response_field; "
                      "fields present: prompt)"),
    ("empty_split", "{dir}/test.jsonl: the test split is empty"),
    ("not_object", "{dir}/list.jsonl line 1: expected a JSON object, got list"),
])
def test_data_errors_name_file_line_and_field(tmp_path, case, message):
    if case == "missing_file":
        path = tmp_path / "nope.jsonl"
    elif case == "malformed":
        path = tmp_path / "bad.jsonl"
        path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": oops}\n')
    elif case == "missing_field":
        path = write_jsonl(tmp_path / "nofield.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    elif case == "empty_split":
        write_jsonl(tmp_path / "train.jsonl", ROWS)
        write_jsonl(tmp_path / "val.jsonl", ROWS[:2])
        (tmp_path / "test.jsonl").write_text("")
        path = tmp_path
    else:
        path = tmp_path / "list.jsonl"
        path.write_text("[1, 2]\n")
    with pytest.raises(DataError) as err:
        load_splits(data_cfg(path))
    assert message.format(dir=tmp_path) in str(err.value)


def test_chat_labels_cover_answer_and_end_of_turn_only(tiny_backbone_factory):
    tok = tiny_backbone_factory().tokenizer
    fmt = PromptFormat.for_tokenizer(tok, "auto", "Be brief.")
    assert fmt.use_chat
    ex = encode(tok, fmt, "When?", "2020-01-02", max_length=256)
    n_prompt = len(ex["prompt_ids"])
    assert ex["input_ids"][:n_prompt] == ex["prompt_ids"]
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.decode(ex["labels"][n_prompt:]) == "2020-01-02<|im_end|>"
    assert tok.decode(ex["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert "Be brief." in tok.decode(ex["prompt_ids"])


def test_plain_format_without_chat_template(tiny_backbone_factory):
    tok = tiny_backbone_factory().tokenizer
    fmt = PromptFormat.for_tokenizer(tok, "plain", None)
    ex = encode(tok, fmt, "When?", "2020", max_length=256)
    assert tok.decode(ex["prompt_ids"]) .endswith("### Response:\n")
    assert tok.decode(ex["labels"][len(ex["prompt_ids"]):]) == "2020" + tok.eos_token


def test_truncation_keeps_the_answer(tiny_backbone_factory):
    tok = tiny_backbone_factory().tokenizer
    fmt = PromptFormat.for_tokenizer(tok, "plain", None)
    ex = encode(tok, fmt, "x" * 500, "2020", max_length=64)
    assert len(ex["input_ids"]) == 64 and ex["truncated"]
    assert tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == "2020" + tok.eos_token


def test_collator_pads_right_for_loss_and_left_for_generation():
    examples = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "prompt_ids": [5, 6], "reference": "a"},
                {"input_ids": [5, 6], "labels": [-100, 6], "prompt_ids": [5], "reference": "b"}]
    b = CausalLMCollator(pad_token_id=0, generation=True)(examples)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [-100, 6, -100, -100]]
    assert b["gen_input_ids"].tolist() == [[5, 6], [0, 5]]
    assert b["gen_attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert b["references"] == ["a", "b"]


# --- length-grouped training batches ----------------------------------------------------------------
def _lengths(n: int = 203, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(20, 120, (n,), generator=generator)).tolist()


def _padding(batches: list[list[int]], lengths: list[int]) -> float:
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def test_grouped_batches_cover_the_epoch_once_with_less_padding_and_depend_on_the_seed_only():
    from peftlab.data.loaders import ResumableLoader

    lengths = _lengths()
    data = [{"i": i} for i in range(len(lengths))]
    collate = lambda rows: [r["i"] for r in rows]  # noqa: E731
    grouped = ResumableLoader(data, 8, collate, seed=5, lengths=lengths, window=8)
    plain = ResumableLoader(data, 8, collate, seed=5)
    g_epochs = [list(grouped) for _ in range(2)]
    p_epoch = list(plain)
    for epoch in g_epochs:
        assert sorted(i for b in epoch for i in b) == list(range(len(lengths)))  # every example once
        assert [len(b) for b in epoch] == [8] * 25 + [3]  # only the epoch's last batch is short
    assert g_epochs[0] != g_epochs[1]  # a new order every epoch
    assert _padding(g_epochs[0], lengths) < 0.25 * _padding(p_epoch, lengths)
    again = ResumableLoader(data, 8, collate, seed=5, lengths=lengths, window=8)
    assert [list(again) for _ in range(2)] == g_epochs  # a fixed function of the seed
    other = ResumableLoader(data, 8, collate, seed=6, lengths=lengths, window=8)
    assert list(other) != g_epochs[0]
    # the batches of a window are shuffled: long and short batches are not always in the same place
    longest = [max(lengths[i] for i in b) for b in g_epochs[0][:8]]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)


def test_grouped_batches_resume_mid_epoch():
    from peftlab.data.loaders import ResumableLoader

    lengths = _lengths(50)
    data = [{"i": i} for i in range(50)]
    collate = lambda rows: [r["i"] for r in rows]  # noqa: E731
    whole = list(ResumableLoader(data, 4, collate, seed=1, lengths=lengths, window=4))
    first = ResumableLoader(data, 4, collate, seed=1, lengths=lengths, window=4)
    it = iter(first)
    seen = [next(it) for _ in range(5)]
    resumed = ResumableLoader(data, 4, collate, seed=1, lengths=lengths, window=4)
    resumed.load_state_dict(first.state_dict())
    assert seen + list(resumed) == whole



def test_several_processes_share_each_grouped_step_as_one_process_of_their_total_batch(monkeypatch):
    """2 processes of batch 4 see, step by step, the examples 1 process of batch 8 sees."""
    import peftlab.data.loaders as loaders

    lengths = _lengths(70)
    data = [{"i": i} for i in range(70)]
    collate = lambda rows: [r["i"] for r in rows]  # noqa: E731
    one = list(loaders.ResumableLoader(data, 8, collate, seed=3, lengths=lengths, window=4))
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(loaders, "rank_and_world", lambda rank=rank: (rank, 2))
        shares.append(list(loaders.ResumableLoader(data, 4, collate, seed=3, lengths=lengths, window=4)))
    assert len(shares[0]) == len(shares[1]) == len(one) == 9  # the last step: 4 + 2 of the 70
    assert [a + b for a, b in zip(*shares, strict=True)] == one


def test_evaluation_batches_go_longest_first_unless_only_some_are_evaluated(cache_dir):
    from peftlab.data.datamodule import TaskDataModule

    from conftest import build

    _, task, bb = build(["model=tiny_llama", "data.max_length=384"], cache_dir)  # nothing truncated: lengths vary
    whole = TaskDataModule(task, bb.tokenizer)
    first = next(iter(whole.test_dataloader()))
    lengths = [len(r["input_ids"]) for r in whole.splits["test"]]
    n = len(first["position"])
    assert len(set(lengths)) > 1 and len(lengths) > n
    assert sorted(first["position"]) != list(range(n))  # not the split's first examples...
    assert min(lengths[i] for i in first["position"]) >= sorted(lengths, reverse=True)[n - 1]  # its longest
    part = TaskDataModule(task, bb.tokenizer, limits={"test": 1})  # one batch: the split's own first examples
    assert next(iter(part.test_dataloader()))["position"] == list(range(n))


def _parse_number_words(text: str) -> int:
    """English number words back to an int: the shipped numbers task checked by a second route."""
    import re

    small = {w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split())}
    small |= {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
    total = current = 0
    for word in re.split(r"[\s,-]+", text.lower().strip()):
        if word in ("and", ""):
            continue
        if word in small:
            current += small[word]
        elif word == "hundred":
            current *= 100
        else:
            total += current * {"thousand": 10**3, "million": 10**6, "billion": 10**9}[word]
            current = 0
    return total + current


def test_builtin_numbers_task_answers_are_the_numbers_its_prompts_spell():
    import re

    cfg = validate(compose(["data=numbers"])).data
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "val": 64, "test": 128}
    seen = [{r["response"] for r in rows} for rows in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    spelled = re.compile(r"^(?:.*: |What is |Write )(.+?)(?: written as a number\?| using digits only\.|$)")
    for row in (r for rows in splits.values() for r in rows):
        assert _parse_number_words(spelled.search(row["prompt"]).group(1)) == int(row["response"]), row
        assert re.fullmatch(r"0|[1-9]\d{0,9}", row["response"])  # digits only: never the dates task's YYYY-MM-DD
