"""Data formats: how a record reads as a conversation. A registry: ``data.format=<name>`` picks one,
``register_data_format(name, fn)`` adds one (``peftlab.plugins`` re-exports it for a user's own package).

A format's function takes a record (a dict as its file or data set holds it, after ``data.columns``
renamed its columns) and the run's data config, and returns the conversation: a list of
``{"role": ..., "content": ...}`` messages, roles ``system`` (first, at most once), ``user`` and
``assistant``, the first turn the user's and the last the assistant's (the answer evaluated). For a
record of the wrong shape it raises :class:`DataError` naming the field; the file and line are added
here. The shipped formats:

- ``prompt_response`` (the default): a prompt field and an answer field (``data.prompt_field``,
  ``data.response_field``), one turn;
- ``messages``: ``messages``, a list of ``{role, content}`` (OpenAI's chat format), any number of turns;
- ``sharegpt``: ``conversations``, a list of ``{from, value}``, ``from`` one of human, gpt, system;
- ``alpaca``: ``instruction``, an optional ``input`` and ``output``, one turn (the user's turn is the
  instruction, then a blank line and the input when there is one).

Conversations may be trained by task types that declared so (``reads_every_format``); the others read
``prompt_response`` records only, and another format is refused as the config is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from peftlab.config.checks import check, one_of
from peftlab.config.schema import DataSchema
from peftlab.data.records import WHERE, shown
from peftlab.errors import ConfigError, DataError

Message = dict[str, str]
FormatFn = Callable[[dict[str, Any], DataSchema], list[Message]]
ROLES = ("system", "user", "assistant")
DEFAULT_FORMAT = "prompt_response"


@dataclass(frozen=True)
class DataFormat:
    name: str
    to_messages: FormatFn
    multi_turn: bool  # a record may hold several assistant turns (data.loss_turns=last means something)


FORMATS: dict[str, DataFormat] = {}
FORMAT_READERS: list[str] = []  # the task types that read every format (the others: prompt_response only)


def register_data_format(name: str, fn: FormatFn, *, multi_turn: bool = True) -> None:
    """Make ``data.format=<name>`` read each record as ``fn(record, data)`` (the conversation: see the
    module's docstring). ``multi_turn=False`` for a format whose records hold one answer each."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a data format's name is a word (letters, digits, _), got {name!r}")
    if name in FORMATS:
        raise ValueError(f"data format {name!r} is registered twice")
    if not callable(fn):
        raise ValueError(f"data format {name!r}: fn must be a function (record, data) -> messages")
    FORMATS[name] = DataFormat(name, fn, multi_turn)


def reads_every_format(task_type: str) -> None:
    """Declare that the task type ``task_type`` trains on conversations of any registered format."""
    if task_type not in FORMAT_READERS:
        FORMAT_READERS.append(task_type)


def check_data(data: DataSchema) -> None:
    """``data.format``, ``data.loss_turns`` and ``data.columns`` against the registered formats and the
    task types that read them (``DataSchema`` calls it as it is built)."""
    if data.format not in FORMATS:
        raise ConfigError(f"data.format: unknown format {data.format!r} (known: {', '.join(sorted(FORMATS))})")
    if data.format != DEFAULT_FORMAT and FORMAT_READERS and data.task_type not in FORMAT_READERS:
        raise ConfigError(f"data.format={data.format}: data.task_type={data.task_type} reads {DEFAULT_FORMAT} "
                          f"records only (conversations train data.task_type={', '.join(FORMAT_READERS)})")
    one_of("data.loss_turns", data.loss_turns, ("all", "last"))
    check(data.loss_turns == "all" or FORMATS[data.format].multi_turn, "data.loss_turns",
          f"must be all for data.format={data.format}, whose records hold one assistant turn", data.loss_turns)
    columns = data.columns if data.columns is not None else {}
    check(isinstance(columns, dict) and all(isinstance(k, str) and k and isinstance(v, str) and v
                                            for k, v in columns.items()),
          "data.columns", "must map column names to field names ({question: prompt, answer: response})", columns)
    seen: dict[str, str] = {}
    for source, target in columns.items():
        if target in seen:
            raise ConfigError(f"data.columns: renames both {seen[target]!r} and {source!r} to {target!r}")
        seen[target] = source


DataSchema.check_format = staticmethod(check_data)


# ------------------------------------------------------------------------ helpers for formats
def present(record: dict[str, Any]) -> str:
    return ", ".join(str(k) for k in record if k != WHERE)


def text_field(record: dict[str, Any], name: str, optional: bool = False) -> str:
    """The text of the field ``name``; ``optional``: missing or null reads as ``""``."""
    if name not in record or (optional and record[name] is None):
        if optional:
            return ""
        raise DataError(f"missing field {name!r} (fields present: {present(record)})")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"field {name!r} holds {shown(value)}, not text")
    return value


def turns_field(record: dict[str, Any], name: str, role_key: str, text_key: str,
                roles: dict[str, str]) -> list[Message]:
    """The list of turns in the field ``name``, each an object whose ``role_key`` is one of ``roles``
    (mapped to the role it stands for) and whose ``text_key`` is its text."""
    if name not in record:
        raise DataError(f"missing field {name!r} (fields present: {present(record)})")
    items = record[name]
    if isinstance(items, str):
        raise DataError(f"field {name!r} holds text, not a list of turns (a CSV field is text only: write "
                        "conversations in JSON lines, JSON or parquet)")
    if not isinstance(items, list) or not items:
        raise DataError(f"field {name!r} holds {shown(items) if items != [] else 'an empty list'}, "
                        "not a list of turns")
    out = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise DataError(f"field {name!r} turn {i} holds {shown(item)}, not an object with {role_key!r} "
                            f"and {text_key!r}")
        missing = [k for k in (role_key, text_key) if k not in item]
        if missing:
            raise DataError(f"field {name!r} turn {i}: missing {missing[0]!r} (keys present: {present(item)})")
        role, text = item[role_key], item[text_key]
        if not isinstance(role, str) or role not in roles:
            raise DataError(f"field {name!r} turn {i}: {role_key} {shown(role)} is not one of {', '.join(roles)}")
        if not isinstance(text, str):
            raise DataError(f"field {name!r} turn {i}: {text_key} holds {shown(text)}, not text")
        out.append({"role": roles[role], "content": text})
    return out


# ------------------------------------------------------------------------ the shipped formats
def prompt_response(record: dict[str, Any], data: DataSchema) -> list[Message]:
    """Checked as it is read (records.check_record): the prompt and the answer as written."""
    return [{"role": "user", "content": str(record[data.prompt_field])},
            {"role": "assistant", "content": str(record[data.response_field])}]


def messages(record: dict[str, Any], data: DataSchema) -> list[Message]:
    return turns_field(record, "messages", "role", "content", {r: r for r in ROLES})


def sharegpt(record: dict[str, Any], data: DataSchema) -> list[Message]:
    return turns_field(record, "conversations", "from", "value",
                       {"system": "system", "human": "user", "gpt": "assistant"})


def alpaca(record: dict[str, Any], data: DataSchema) -> list[Message]:
    instruction, extra = text_field(record, "instruction"), text_field(record, "input", optional=True)
    output = text_field(record, "output")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


register_data_format(DEFAULT_FORMAT, prompt_response, multi_turn=False)
register_data_format("messages", messages)
register_data_format("sharegpt", sharegpt)
register_data_format("alpaca", alpaca, multi_turn=False)


# ------------------------------------------------------------------------ reading a record
def _check_turns(turns: Any) -> None:
    """A conversation as every format must give it (a plug-in's too)."""
    if not isinstance(turns, list) or not turns:
        raise DataError("the conversation has no turns")
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"turn {i} is not a message with a role ({', '.join(ROLES)}) and text content")
        if turn["role"] == "system" and i > 1:
            raise DataError(f"turn {i} is a system message: one comes first or not at all")
    first = turns[1] if turns[0]["role"] == "system" and len(turns) > 1 else turns[0]
    if first["role"] != "user":
        raise DataError(f"the conversation starts with the {first['role']}'s turn: the first turn (after a system "
                        "message) must be the user's")
    if turns[-1]["role"] != "assistant":
        raise DataError(f"the conversation ends with the {turns[-1]['role']}'s turn: the last must be the "
                        "assistant's (the answer trained and evaluated)")


def conversation(record: dict[str, Any], data: DataSchema, where: str = "") -> list[Message]:
    """The record as a checked conversation; a conversation without a system message gets
    ``data.system_prompt`` (when set) as one. Errors name the file and line (``where``) and the field."""
    fmt = FORMATS[data.format]
    where = where or str(record.get(WHERE, "a record"))
    try:
        turns = fmt.to_messages(record, data)
        _check_turns(turns)
    except DataError as err:
        raise DataError(f"{where}: {err} (data.format={fmt.name})") from None
    except KeyError as err:  # a plug-in's function reading a field the record lacks
        raise DataError(f"{where}: missing field {err.args[0]!r} (data.format={fmt.name}; fields present: "
                        f"{present(record)})") from None
    if data.system_prompt and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": data.system_prompt}, *turns]
    return turns
