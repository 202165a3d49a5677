"""Prompt formatting and tokenisation with completion-only labels.

The chat template is used when the tokenizer has one (``data.prompt_format=auto``), a plain
instruction format otherwise. Only the answer tokens (and the end-of-turn token) carry labels;
the prompt positions are ``-100``. The prompt ids used for generation at evaluation are exactly
the ids the model was trained to continue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from peftlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PLAIN_TEMPLATE = "{system}### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptFormat:
    use_chat: bool
    system_prompt: Optional[str]

    @classmethod
    def for_tokenizer(cls, tokenizer, prompt_format: str, system_prompt: Optional[str]) -> "PromptFormat":
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise ConfigError("data.prompt_format: 'chat' but the tokenizer has no chat template (use auto or plain)")
        return cls(use_chat=prompt_format == "chat" or (prompt_format == "auto" and has_template),
                   system_prompt=system_prompt)

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}]

    def prompt_text(self, tokenizer, prompt: str) -> str:
        if self.use_chat:
            return tokenizer.apply_chat_template(self._messages(prompt), add_generation_prompt=True, tokenize=False)
        system = f"{self.system_prompt}\n\n" if self.system_prompt else ""
        return PLAIN_TEMPLATE.format(system=system, prompt=prompt)

    def answer_text(self, tokenizer, prompt: str, response: str) -> str:
        """What follows the prompt in a full conversation: the response and its end-of-turn."""
        if self.use_chat:
            head = self.prompt_text(tokenizer, prompt)
            full = tokenizer.apply_chat_template(
                self._messages(prompt) + [{"role": "assistant", "content": response}], tokenize=False)
            if full.startswith(head):
                answer = full[len(head):]
                eos = tokenizer.eos_token
                if eos and eos in answer:  # drop what the template adds after the end of turn
                    answer = answer[: answer.index(eos) + len(eos)]
                return answer
        return response + (tokenizer.eos_token or "")


def encode(tokenizer, fmt: PromptFormat, prompt: str, response: str, max_length: int) -> dict[str, Any]:
    """input_ids = prompt + answer; labels mask the prompt; prompt_ids for generation."""
    prompt_ids = tokenizer(fmt.prompt_text(tokenizer, prompt), add_special_tokens=not fmt.use_chat).input_ids
    answer_ids = tokenizer(fmt.answer_text(tokenizer, prompt, response), add_special_tokens=False).input_ids
    truncated = len(prompt_ids) + len(answer_ids) > max_length
    if truncated:  # keep the answer whole when possible; cut the prompt from the left
        answer_ids = answer_ids[:max_length - 1]
        prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        "prompt_ids": prompt_ids,
        "reference": str(response),
        "truncated": truncated,
    }


def encode_classification(tokenizer, text: str, label: str, label_ids: dict[str, int], max_length: int,
                          where: str = "") -> dict[str, Any]:
    """Token ids of ``text`` (with the tokenizer's special tokens) and the label's id."""
    if label not in label_ids:
        raise DataError(f"{where}: label {label!r} is not one of data.labels ({', '.join(label_ids)})")
    enc = tokenizer(text, truncation=True, max_length=max_length)
    return {"input_ids": enc.input_ids, "label": label_ids[label], "truncated": len(enc.input_ids) >= max_length}
