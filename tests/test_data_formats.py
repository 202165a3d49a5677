"""Data in the formats people have: conversations (``messages``, ShareGPT) with the loss on every
assistant turn or on the last, Alpaca records, column mapping for local files and hub data sets, the
shipped multi-turn task (its loss mask checked against the chat template by hand), and a small
example of each format trained on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab.data.formats as formats
from peftlab.config import validate
from peftlab.data.conversations import encode_conversation, encode_turns
from peftlab.data.sources import WHERE, load_splits
from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat, encode
from peftlab.errors import ConfigError, DataError
from peftlab.models.sources import byte_tokenizer
from peftlab.tasks import make_task

from conftest import build, compose, train

CHATML = byte_tokenizer("chatml")  # the tiny models' tokenizer: one token a byte, ChatML special tokens
PLAIN = byte_tokenizer()  # tiny_gpt2's: no chat template
CONVERSATION = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]


def data_cfg(path, *extra):
    return validate(compose(["data=custom", f"data.path={path}", *extra])).data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(tokenizer, example) -> list[str]:
    """The labelled runs of an example, decoded."""
    runs, run = [], []
    for label in [*example["labels"], IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs, run = [*runs, tokenizer.decode(run)], []
    return runs


# ------------------------------------------------------------------ the loss mask, by hand
def test_the_shipped_conversations_train_exactly_the_assistant_tokens_of_every_turn():
    conf = validate(compose(["data=date_chats", "data.max_length=512"]))  # one token a byte here
    record = load_splits(conf.data)["train"][1]
    encode_record = make_task(conf.data).encoder(CHATML)
    example = encode_record(record, record[WHERE])
    # ChatML, as the tiny models' template writes it, by hand
    system = ("<|im_start|>system\nYou convert dates to ISO 8601 (YYYY-MM-DD). Answer with only what is asked."
              "<|im_end|>\n")
    turn1 = "<|im_start|>user\nNormalize this date to YYYY-MM-DD: OCTOBER 5 2055<|im_end|>\n<|im_start|>assistant\n"
    turn2 = "\n<|im_start|>user\nWhich month is that, as two digits?<|im_end|>\n<|im_start|>assistant\n"
    turn3 = "\n<|im_start|>user\nNow convert Sep 9, 2062<|im_end|>\n<|im_start|>assistant\n"
    texts = [system + turn1, "2055-10-05<|im_end|>", turn2, "10<|im_end|>", turn3, "2062-09-09<|im_end|>"]
    assert example["input_ids"] == [i for text in texts for i in CHATML(text, add_special_tokens=False).input_ids]
    trained = [[i if k % 2 else IGNORE_INDEX for i in CHATML(text, add_special_tokens=False).input_ids]
               for k, text in enumerate(texts)]
    assert example["labels"] == [label for labels in trained for label in labels]
    assert CHATML.decode(example["prompt_ids"]) == "".join(texts[:5])  # evaluation: the last turn, given the rest
    assert example["reference"] == "2062-09-09" and not example["truncated"]
    # the template itself renders the same text: the hand-written one is the template's
    assert CHATML.apply_chat_template(record["messages"], tokenize=False) == "".join(texts) + "\n"

    last = make_task(validate(compose(["data=date_chats", "data.max_length=512", "data.loss_turns=last"])).data)
    last = last.encoder(CHATML)
    only_last = last(record, record[WHERE])
    assert only_last["input_ids"] == example["input_ids"] and answers(CHATML, only_last) == ["2062-09-09<|im_end|>"]


def test_without_a_chat_template_the_turns_follow_the_plain_instruction_format():
    fmt = PromptFormat.for_tokenizer(PLAIN, "auto", None)
    example = encode_conversation(PLAIN, fmt, [{"role": "system", "content": "S"}, *CONVERSATION], 256)
    assert PLAIN.decode(example["input_ids"]) == ("S\n\n### Instruction:\nq1\n\n### Response:\na1</s>"
                                                  "\n\n### Instruction:\nq2\n\n### Response:\na2</s>")
    assert answers(PLAIN, example) == ["a1</s>", "a2</s>"]
    assert PLAIN.decode(example["prompt_ids"]).endswith("a1</s>\n\n### Instruction:\nq2\n\n### Response:\n")


def test_the_mask_from_generation_markers_is_the_mask_from_prefixes():
    marked = byte_tokenizer(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == "
        "'assistant' %}{% generation %}{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}"
        "{% else %}{{message['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
    assert CHATML.apply_chat_template(CONVERSATION, tokenize=False) == marked.apply_chat_template(
        CONVERSATION, tokenize=False)
    by_markers = encode_conversation(marked, PromptFormat.for_tokenizer(marked, "auto", None), CONVERSATION, 256)
    by_prefixes = encode_conversation(CHATML, PromptFormat.for_tokenizer(CHATML, "auto", None), CONVERSATION, 256)
    assert by_markers == by_prefixes and answers(CHATML, by_markers) == ["a1<|im_end|>", "a2<|im_end|>"]


def test_where_a_token_spans_a_cut_the_pieces_are_tokenised_one_by_one():
    """A tokenizer that merges the newline before an answer with its first letter: the whole text's
    tokens do not split where the answer starts, so each piece is tokenised on its own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(CHATML.backend_tokenizer.get_vocab())
    vocab["Ċa"] = len(vocab)
    merging = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "a")]))
    merging.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    merging.decoder = CHATML.backend_tokenizer.decoder
    merging.add_special_tokens(["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=merging, eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = CHATML.chat_template
    whole = tok(tok.apply_chat_template(CONVERSATION, tokenize=False), add_special_tokens=False).input_ids
    assert vocab["Ċa"] in whole  # the merge happens where an answer starts
    example = encode_conversation(tok, PromptFormat.for_tokenizer(tok, "auto", None), CONVERSATION, 256)
    assert vocab["Ċa"] not in example["input_ids"]
    assert answers(tok, example) == ["a1<|im_end|>", "a2<|im_end|>"]
    assert tok.decode(example["prompt_ids"]).endswith("a1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
                                                      "<|im_start|>assistant\n")


def test_a_long_conversation_is_cut_from_the_left_and_keeps_its_last_answer():
    fmt = PromptFormat.for_tokenizer(CHATML, "auto", None)
    turns = [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "a" * 100},
             {"role": "user", "content": "q"}, {"role": "assistant", "content": "2020"}]
    example = encode_conversation(CHATML, fmt, turns, 64)
    assert len(example["input_ids"]) == 64 and example["truncated"]
    assert CHATML.decode(example["input_ids"]).endswith("<|im_start|>assistant\n2020<|im_end|>")
    assert answers(CHATML, example)[-1] == "2020<|im_end|>"
    assert example["input_ids"][:len(example["prompt_ids"])] == example["prompt_ids"]


@pytest.mark.parametrize("tokenizer", [CHATML, PLAIN], ids=["chat", "plain"])
def test_one_question_and_its_answer_encode_as_a_prompt_response_record(tokenizer):
    fmt = PromptFormat.for_tokenizer(tokenizer, "auto", "Be brief.")
    turns = [{"role": "system", "content": "Be brief."}, *CONVERSATION[:2]]
    assert encode_turns(tokenizer, fmt, turns, 256) == encode(tokenizer, fmt, "q1", "a1", 256)


# ------------------------------------------------------------------ the formats
RECORDS = {
    "messages": {"messages": [{"role": "system", "content": "S"}, *CONVERSATION]},
    "sharegpt": {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q1"},
                                   {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"},
                                   {"from": "gpt", "value": "a2"}]},
    "alpaca": {"instruction": "q1", "input": "x", "output": "a1"},
    "prompt_response": {"prompt": "q1", "response": "a1"},
}
TURNS = {
    "messages": [{"role": "system", "content": "S"}, *CONVERSATION],
    "sharegpt": [{"role": "system", "content": "S"}, *CONVERSATION],
    "alpaca": [{"role": "user", "content": "q1\n\nx"}, {"role": "assistant", "content": "a1"}],
    "prompt_response": CONVERSATION[:2],
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_each_format_reads_its_records_as_a_conversation(tmp_path, name):
    cfg = data_cfg(write_jsonl(tmp_path / "d.jsonl", [RECORDS[name]] * 10), f"data.format={name}")
    rows = load_splits(cfg, make_task(cfg).fields())["train"]
    assert formats.conversation(rows[0], cfg) == TURNS[name]


def test_alpaca_without_an_input_is_the_instruction_alone_and_a_system_prompt_is_added():
    cfg = validate(compose(["data=custom", "data.path=x.jsonl", "data.format=alpaca",
                            "data.system_prompt=Be brief."])).data
    assert formats.conversation({"instruction": "q1", "output": "a1"}, cfg) == [
        {"role": "system", "content": "Be brief."}, *TURNS["prompt_response"]]
    assert formats.conversation({"instruction": "q1", "input": None, "output": "a1"}, cfg)[1]["content"] == "q1"


@pytest.mark.parametrize("name,record,message", [
    ("messages", {"conversations": []}, "missing field 'messages' (fields present: conversations)"),
    ("messages", {"messages": "[{\"role\": \"user\"}]"},
     "field 'messages' holds text, not a list of turns (a CSV field is text only: write conversations in JSON "
     "lines, JSON or parquet)"),
    ("messages", {"messages": []}, "field 'messages' holds an empty list, not a list of turns"),
    ("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
     "field 'messages' turn 2: role 'tool' is not one of system, user, assistant"),
    ("messages", {"messages": [{"role": "user", "content": 3}]},
     "field 'messages' turn 1: content holds the number 3, not text"),
    ("messages", {"messages": [{"role": "user"}]}, "field 'messages' turn 1: missing 'content' (keys present: role)"),
    ("messages", {"messages": CONVERSATION[:3]},
     "the conversation ends with the user's turn: the last must be the assistant's (the answer trained and "
     "evaluated)"),
    ("messages", {"messages": CONVERSATION[1:]},
     "the conversation starts with the assistant's turn: the first turn (after a system message) must be the "
     "user's"),
    ("messages", {"messages": [*CONVERSATION[:2], {"role": "system", "content": "S"}, *CONVERSATION[2:]]},
     "turn 3 is a system message: one comes first or not at all"),
    ("sharegpt", {"conversations": [{"from": "bot", "value": "x"}]},
     "field 'conversations' turn 1: from 'bot' is not one of system, human, gpt"),
    ("sharegpt", {"conversations": ["hi"]},
     "field 'conversations' turn 1 holds 'hi', not an object with 'from' and 'value'"),
    ("alpaca", {"instruction": "q", "input": ""}, "missing field 'output' (fields present: instruction, input)"),
    ("alpaca", {"instruction": "q", "output": 2024}, "field 'output' holds the number 2024, not text"),
])
def test_a_record_of_the_wrong_shape_is_refused_naming_file_line_and_field(tmp_path, name, record, message):
    good = RECORDS[name]
    path = write_jsonl(tmp_path / "d.jsonl", [good, record, *[good] * 8])
    cfg = data_cfg(path, f"data.format={name}", "data.val_fraction=0.1", "data.test_fraction=0.1")
    task = make_task(cfg)
    encode_record = task.encoder(CHATML)
    rows = [r for rows in load_splits(cfg, task.fields()).values() for r in rows]
    with pytest.raises(DataError) as err:
        for row in rows:
            encode_record(row, row[WHERE])
    assert str(err.value) == f"{path} line 2: {message} (data.format={name})"


def test_csv_holds_text_only_alpaca_reads_from_it_and_other_columns_are_left_alone(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,input,output,id\n" + "".join(f"q{i},,00{i},{i}\n" for i in range(10)))
    cfg = data_cfg(path, "data.format=alpaca")
    row = load_splits(cfg, make_task(cfg).fields())["train"][0]
    assert row["id"].isdigit() and formats.conversation(row, cfg)[1]["content"].startswith("00")


@pytest.mark.parametrize("overrides,message", [
    (["data.format=chatml"], "data.format: unknown format 'chatml' (known: alpaca, messages, prompt_response, "
                             "sharegpt)"),
    (["data.format=alpaca", "data.loss_turns=last"],
     "data.loss_turns must be all for data.format=alpaca, whose records hold one assistant turn, got 'last'"),
    (["data.loss_turns=first"], "data.loss_turns must be one of all, last, got 'first'"),
    (["data=date_prefs", "data.format=messages"],
     "data.format=messages: data.task_type=preference reads prompt_response records only (conversations train "
     "data.task_type=causal_lm)"),
    (["data.columns={q: prompt, question: prompt}"], "data.columns: renames both 'q' and 'question' to 'prompt'"),
    (["data.columns=[question]"], "data.columns must map column names to field names ({question: prompt, answer: "
                                  "response}), got ['question']"),
])
def test_format_settings_are_checked_with_the_config(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value) == message


def test_a_format_of_ones_own_is_registered_once_and_then_read(monkeypatch, tmp_path):
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))

    def qa(record, data):
        return [{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}]

    formats.register_data_format("qa", qa, multi_turn=False)
    with pytest.raises(ValueError, match="^data format 'qa' is registered twice$"):
        formats.register_data_format("qa", qa)
    cfg = data_cfg(write_jsonl(tmp_path / "d.jsonl", [{"q": "q1", "a": "a1"}] * 9 + [{"q": "q1"}]), "data.format=qa")
    assert formats.conversation({"q": "q1", "a": "a1"}, cfg) == TURNS["prompt_response"]
    with pytest.raises(DataError, match=r"^x line 3: missing field 'a' \(data.format=qa; fields present: q\)$"):
        formats.conversation({"q": "q1"}, cfg, "x line 3")


# ------------------------------------------------------------------ column mapping, hub splits
def test_columns_are_renamed_in_a_local_file_and_a_missing_one_is_named(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    row = load_splits(data_cfg(path, "data.columns={question: prompt, answer: response}"))["train"][0]
    assert row.keys() == {"prompt", "response", WHERE} and row["prompt"].startswith("q")
    with pytest.raises(DataError) as err:
        load_splits(data_cfg(path, "data.columns={query: prompt, answer: response}"))
    assert str(err.value) == (f"{path} line 1: missing column 'query' (data.columns renames it to 'prompt'; "
                              "fields present: question, answer)")


def test_a_hub_data_set_takes_its_split_names_and_a_column_mapping(monkeypatch):
    import datasets

    import peftlab.data.sources as sources

    def split(n):
        return datasets.Dataset.from_list([{"instruction": f"q{i}", "output": f"a{i}", "input": ""} for i in range(n)])

    hub = datasets.DatasetDict({"training": split(6), "validation": split(2), "test": split(3)})
    monkeypatch.setattr(sources, "_hub_data_set", lambda cfg, name: hub)
    columns = "data.columns={instruction: prompt, output: response}"
    splits = load_splits(data_cfg("hf://someone/alpaca-like", "data.train_split=training", columns))
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 3}
    assert splits["val"][1] == {"prompt": "q1", "response": "a1", "input": "",
                                WHERE: "someone/alpaca-like[validation] row 2"}
    with pytest.raises(DataError, match=r"data.train_split: 'train' is not a split of 'hf://someone/alpaca-like' "
                                        r"\(splits: training, validation, test\)"):
        load_splits(data_cfg("hf://someone/alpaca-like", columns))


# ------------------------------------------------------------------ evaluation and training
def test_evaluation_of_conversations_scores_the_loss_of_every_answer_in_one_pass(cache_dir):
    """The evaluation forward (prompt left-padded, then the last answer) counts the earlier answers'
    labels, which lie in the prompt, as the training forward does."""
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.tasks.generation import score_and_generate
    from peftlab.tasks.heads import answer_logits

    conf, task, bb = build(["model=tiny_llama", "data=date_chats", "data.max_eval_examples=4",
                            "data.max_length=640", "data.max_new_tokens=2"], cache_dir)
    batch = next(iter(TaskDataModule(task, bb.tokenizer).val_dataloader()))
    logits, targets, _ = score_and_generate(bb.model.eval(), bb.tokenizer, batch, 2)
    with torch.no_grad():
        expected_logits, expected_targets = answer_logits(bb.model, batch)
    assert len(targets) > sum(len(r) + 1 for r in batch["references"])  # more than the last answers (and ends)
    assert torch.equal(targets, expected_targets)
    assert torch.allclose(logits, expected_logits, atol=1e-4, rtol=1e-4)


def _alpaca(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Rewrite the date as YYYY-MM-DD.", "input": f"{d} March 2020",
                                 "output": f"2020-03-{d:02d}"} for d in range(1, 25)], indent=1))
    return [f"data.path={path}", "data.format=alpaca"]


def _sharegpt(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"{d} March 2020 as YYYY-MM-DD?"},
                               {"from": "gpt", "value": f"2020-03-{d:02d}"},
                               {"from": "human", "value": "Only the year."}, {"from": "gpt", "value": "2020"}]}
            for d in range(1, 25)]
    return [f"data.path={write_jsonl(tmp_path / 'sharegpt.jsonl', rows)}", "data.format=sharegpt"]


def _parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": f"{d} March 2020 as YYYY-MM-DD?"},
                          {"role": "assistant", "content": f"2020-03-{d:02d}"}]} for d in range(1, 25)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "messages.parquet")
    return [f"data.path={tmp_path / 'messages.parquet'}", "data.format=messages"]


# the shipped multi-turn set in the fast suite; the generated examples of each other format in CI's integration run
@pytest.mark.parametrize("make", [pytest.param(_alpaca, marks=pytest.mark.integration),
                                  pytest.param(_sharegpt, marks=pytest.mark.integration),
                                  pytest.param(_parquet, marks=pytest.mark.integration),
                                  lambda tmp_path: ["data=date_chats"]],
                         ids=["alpaca-json", "sharegpt-jsonl", "messages-parquet", "date_chats"])
def test_each_format_trains_on_the_tiny_model(tmp_path, cache_dir, make):
    data = make(tmp_path)
    run_dir = tmp_path / "run"
    train(compose(["debug=tiny", *(["data=custom"] if data[0].startswith("data.path") else []), *data,
                   "data.batch_size=4", "data.eval_batch_size=4", "trainer.max_steps=2", "zero_shot=false",
                   "logger=none", "merge_after=false"], run_dir=run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train"]["steps"] == 2
    assert 0 < metrics["test"]["loss"] < 20 and 0 <= metrics["test"]["exact_match"] <= 1


@pytest.mark.slow
def test_smollm2s_template_splits_between_tokens_at_every_cut():
    """SmolLM2's own tokenizer: the ids are those of its chat template's text, and the answers' spans
    fall between its tokens."""
    from transformers import AutoTokenizer

    from peftlab.models.sources import convert_gguf

    from conftest import USER_CACHE

    conf = validate(compose(["data=date_chats"]))
    tok = AutoTokenizer.from_pretrained(convert_gguf(conf.model, USER_CACHE))
    record = load_splits(conf.data)["train"][1]
    example = make_task(conf.data).encoder(tok)(record, record[WHERE])
    whole = tok.apply_chat_template(record["messages"], tokenize=True, return_dict=False)
    assert example["input_ids"] == whole[:len(example["input_ids"])]
    assert answers(tok, example) == ["2055-10-05<|im_end|>", "10<|im_end|>", "2062-09-09<|im_end|>"]
