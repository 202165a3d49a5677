"""Data as written: a CSV field is the string in the file (never a guessed type), and a prompt or an
answer that is not text (NaN, Infinity, a number, true, null) is refused naming the file and line,
never trained as the string Python would make of it."""

from __future__ import annotations

import json

import pytest

from peftlab.config import validate
from peftlab.data.records import WHERE, read_file
from peftlab.data.sources import load_splits
from peftlab.errors import DataError

from conftest import compose

ANSWERS = {"prompt_field": "prompt", "response_field": "response"}


def test_csv_fields_are_the_strings_in_the_file(tmp_path):
    answers = ["002", "None", "NA", "", "nan", "1e5", "TRUE", " 7 ", "-0", "null"]
    lines = ["prompt,response"] + [f"q{i},{a}" for i, a in enumerate(answers)]
    lines[3] = 'q2,"NA"'
    lines.insert(5, "")  # a blank line: no record, but the lines after it keep their numbers
    lines.insert(7, '"a prompt on\ntwo lines",x')
    (tmp_path / "train.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n")  # a spreadsheet's BOM and CRLF
    for split in ("val", "test"):
        (tmp_path / f"{split}.csv").write_text("prompt,response\nq,002\n")
    splits = load_splits(validate(compose(["data=custom", f"data.path={tmp_path}"])).data)
    train = splits["train"]
    assert [r["response"] for r in train] == ["002", "None", "NA", "", "nan", "x", "1e5", "TRUE", " 7 ", "-0", "null"]
    assert all(isinstance(r["prompt"], str) for r in train) and train[5]["prompt"] == "a prompt on\ntwo lines"
    path = tmp_path / "train.csv"
    assert [r[WHERE] for r in train[3:6]] == [f"{path} line 5", f"{path} line 7", f"{path} line 8"]
    assert splits["test"][0]["response"] == "002"


@pytest.mark.parametrize("content, message", [
    ("prompt,response\nq,a\nq,a,extra\n", "{path} line 3: 3 fields, but the header names 2"),
    ("prompt,response\nq\n", "{path} line 2: 1 fields, but the header names 2"),
    ("prompt,response,prompt\nq,a,b\n", "{path} line 1: the column 'prompt' is named twice"),
    ("prompt,answer\nq,a\n", "{path} line 2: missing field 'response' (data.response_field; fields present: "
                             "prompt, answer)"),
])
def test_a_csv_file_that_does_not_hold_its_records_is_refused(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_file(path, ANSWERS)
    assert str(err.value) == message.format(path=path)


@pytest.mark.parametrize("value, shown", [
    ("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("2.50", "the number 2.5"),
    ("true", "true"), ('["a"]', "a list"), ('{"a": 1}', "an object"),
])
def test_an_answer_that_is_not_text_is_refused_naming_file_and_line(tmp_path, value, shown):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\n\n{"prompt": "q", "response": ' + value + "}\n")
    with pytest.raises(DataError) as err:
        load_splits(validate(compose(["data=custom", f"data.path={path}"])).data)
    assert str(err.value) == (f"{path} line 3: field 'response' holds {shown}, not text (data.response_field; in "
                              "JSON, text is written in quotes)")


def test_a_prompt_that_is_null_or_a_number_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": null, "response": "a"}\n')
    with pytest.raises(DataError) as err:
        read_file(path, ANSWERS)
    assert str(err.value) == f"{path} line 1: field 'prompt' is null (data.prompt_field)"
    path.write_text('{"prompt": 12, "response": "a"}\n')
    with pytest.raises(DataError) as err:
        read_file(path, ANSWERS)
    assert str(err.value) == (f"{path} line 1: field 'prompt' holds the number 12, not text (data.prompt_field; in "
                              "JSON, text is written in quotes)")


def test_a_json_file_names_the_line_of_the_record(tmp_path):
    path = tmp_path / "d.json"
    records = [{"prompt": "q", "response": "a"}, {"prompt": "q", "response": float("nan")}]
    path.write_text(json.dumps({"data": records}, indent=2))  # Python writes NaN into JSON
    with pytest.raises(DataError) as err:
        read_file(path, ANSWERS)
    assert str(err.value) == (f"{path} line 7: field 'response' holds NaN, not text (data.response_field; in "
                              "JSON, text is written in quotes)")
    path.write_text(json.dumps(records[:1] * 3))
    assert [r[WHERE] for r in read_file(path, ANSWERS)] == [f"{path} line 1"] * 3


def test_an_integer_answer_is_kept_as_a_class_id(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "response": 1}\n')
    assert read_file(path, ANSWERS)[0]["response"] == 1


def test_a_margin_must_be_a_finite_number(tmp_path):
    fields = {"prompt_field": "prompt", "chosen_field": "chosen", "rejected_field": "rejected",
              "margin_field": "margin"}
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,rejected,margin\nq,a,b,0.5\nq,a,b,nan\n")
    with pytest.raises(DataError) as err:
        read_file(path, fields)
    assert str(err.value) == f"{path} line 3: field 'margin' holds 'nan', not a finite number (data.margin_field)"


def test_a_parquet_column_of_numbers_is_no_answer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "response": 1.5}, {"prompt": "q", "response": float("inf")}]),
                   path)
    with pytest.raises(DataError) as err:
        read_file(path, ANSWERS)
    assert str(err.value) == (f"{path} row 1: field 'response' holds the number 1.5, not text (data.response_field; "
                              "in JSON, text is written in quotes)")
