"""Conversations as token ids, with the loss on the assistant turns (every one, or the last only).

One question and its answer are encoded as every prompt -> answer record is (``tokenize.encode``).
A longer conversation is rendered whole, with the chat template (or the plain instruction format,
turn after turn), and its loss mask found:

- from the template's own ``{% generation %}`` markers, where it has them (transformers' assistant
  token mask);
- otherwise from prefixes of the conversation: the turns before an answer, rendered with the
  generation prompt, end where the answer starts; the turns through the answer end where it stops
  (cut after its end-of-turn token, as a single answer is: what the template writes after it belongs
  to the next turn). The whole text is tokenised once and each prefix on its own, and the token ids
  compared: where a prefix's ids are the start of the whole's, the cut falls between two tokens
  there. Where a tokenizer merges across a cut, the pieces are tokenised one by one instead, as a
  prompt and its answer are.

The prompt that evaluation generates from is everything before the last answer: the model answers
the last turn given the earlier ones, and exact match compares that answer.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat, encode
from peftlab.errors import DataError

Turns = list[dict[str, str]]
Spans = list[tuple[int, int]]
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def plain_text(turns: Turns, eos: str) -> str:
    """The plain instruction format (``tokenize.PLAIN_TEMPLATE``) turn after turn: each answer ends
    with the end token, and the next instruction follows a blank line."""
    out = []
    for i, turn in enumerate(turns):
        role, text = turn["role"], turn["content"]
        if role == "system":
            out.append(f"{text}\n\n")
        elif role == "user":
            gap = "\n\n" if i and turns[i - 1]["role"] == "assistant" else ""
            out.append(f"{gap}### Instruction:\n{text}\n\n### Response:\n")
        else:
            out.append(text + eos)
    return "".join(out)


def render(tokenizer: Any, fmt: PromptFormat, turns: Turns, add_generation_prompt: bool = False) -> str:
    if not fmt.use_chat:
        return plain_text(turns, tokenizer.eos_token or "")
    try:
        return tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as err:  # noqa: BLE001  (jinja's errors, or what the template raises itself)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"the chat template refuses the conversation: {first}") from None


def _char_spans(tokenizer: Any, fmt: PromptFormat, turns: Turns) -> tuple[str, Spans]:
    """The conversation's text through its last answer, and where each answer is in it."""
    whole = render(tokenizer, fmt, turns)
    eos = tokenizer.eos_token
    spans = []
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        head = render(tokenizer, fmt, turns[:k], add_generation_prompt=True)
        upto = render(tokenizer, fmt, turns[:k + 1])
        if not (upto.startswith(head) and whole.startswith(upto)):
            raise DataError(f"the chat template renders the turns before turn {k + 1} otherwise inside the whole "
                            "conversation, so the loss mask cannot be found from prefixes (a template with "
                            "{% generation %} markers gives it)")
        answer = upto[len(head):]
        end = len(head) + answer.index(eos) + len(eos) if eos and eos in answer else len(upto)
        spans.append((len(head), end))
    return whole[:spans[-1][1]], spans


def _token_spans(tokenizer: Any, fmt: PromptFormat, text: str, spans: Spans) -> tuple[list[int], Spans]:
    """The token ids of ``text`` and the character ``spans`` as token spans."""
    special = not fmt.use_chat  # a chat template writes its own special tokens; plain text gets the tokenizer's
    cuts = sorted({cut for span in spans for cut in span} | {len(text)})
    ids = tokenizer(text, add_special_tokens=special).input_ids
    at: dict[int, int] = {}
    for cut in cuts:
        head = tokenizer(text[:cut], add_special_tokens=special).input_ids
        if ids[:len(head)] != head:  # a token spans the cut: the pieces one by one
            ids, at, start = [], {}, 0
            for piece_end in cuts:
                ids += tokenizer(text[start:piece_end], add_special_tokens=special and start == 0).input_ids
                at[piece_end], start = len(ids), piece_end
            break
        at[cut] = len(head)
    return ids, [(at[s], at[e]) for s, e in spans]


def _marked_spans(tokenizer: Any, turns: Turns) -> tuple[list[int], Spans]:
    """The token ids and the answers' token spans from the template's ``{% generation %}`` markers."""
    try:
        out = tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    except Exception as err:  # noqa: BLE001  (jinja's errors, or what the template raises itself)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"the chat template refuses the conversation: {first}") from None
    ids, mask = list(out["input_ids"]), [*out["assistant_masks"], 0]
    starts = [i for i in range(len(ids)) if mask[i] and (i == 0 or not mask[i - 1])]
    spans = [(s, next(e for e in range(s, len(mask)) if not mask[e])) for s in starts]
    if not spans:
        raise DataError("the chat template's {% generation %} markers mark no token of the conversation")
    return ids, spans


def _has_markers(tokenizer: Any, fmt: PromptFormat) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return fmt.use_chat and isinstance(template, str) and bool(GENERATION_MARKER.search(template))


def encode_conversation(tokenizer: Any, fmt: PromptFormat, turns: Turns, max_length: int,
                        last_only: bool = False) -> dict[str, Any]:
    """input_ids through the last answer; labels on every answer (``last_only``: the last); prompt_ids:
    everything before the last answer. Too long, the conversation is cut from the left, the last answer
    kept whole when it fits (as a single answer is)."""
    if _has_markers(tokenizer, fmt):
        ids, spans = _marked_spans(tokenizer, turns)
    else:
        ids, spans = _token_spans(tokenizer, fmt, *_char_spans(tokenizer, fmt, turns))
    spans = spans[-1:] if last_only else spans
    start, end = spans[-1]
    ids = ids[:end]
    labels = [IGNORE_INDEX] * len(ids)
    for s, e in spans:
        labels[s:e] = ids[s:e]
    truncated = len(ids) > max_length
    if truncated:
        answer = min(end - start, max_length - 1)
        low = max(0, start - (max_length - answer))
        ids, labels, start = ids[low:start + answer], labels[low:start + answer], start - low
    return {"input_ids": ids, "labels": labels, "prompt_ids": ids[:start], "reference": turns[-1]["content"],
            "truncated": truncated}


def encode_turns(tokenizer: Any, fmt: PromptFormat, turns: Turns, max_length: int,
                 last_only: bool = False) -> dict[str, Any]:
    """A checked conversation (``formats.conversation``) as a training and evaluation example."""
    system = turns[0]["content"] if turns[0]["role"] == "system" else None
    rest = turns[1:] if system is not None else turns
    if len(rest) == 2:  # one question, one answer: as every prompt -> answer record
        return encode(tokenizer, replace(fmt, system_prompt=system), rest[0]["content"], rest[1]["content"],
                      max_length)
    return encode_conversation(tokenizer, fmt, turns, max_length, last_only)
