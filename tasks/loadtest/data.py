"""Prompts: synthetic ones with exact input token counts, or a JSONL file. Seedable.

With the model's tokenizer, a synthetic prompt is random vocabulary tokens decoded to text
and re-encoded until it is exactly `input_tokens` long (what vllm's random dataset does).
Without one, prompts are common English words, about one token each; the server's `usage`
then gives the true counts after the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.errors import BadInput

from .config import LoadProfile

# Distinct prompts prepared up front; longer runs cycle through them.
MAX_DISTINCT_PROMPTS = 10_000

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out up about into them "
    "time only new some could these two may first then do any like other than now my over such our man me even "
    "most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three"
).split()


@dataclass(frozen=True)
class Prompt:
    content: Any  # str for completions; str or a messages list for chat
    input_tokens: int  # exact when `exact`, else an estimate until the server's usage says
    output_tokens: int
    exact: bool


class Tokenizer:
    """The model's tokenizer from a local folder: `tokenizers` when tokenizer.json is there, else transformers."""

    def __init__(self, path: str):
        self.path = path
        self._fast = None
        self._hf = None
        tj = os.path.join(path, "tokenizer.json")
        if os.path.isfile(tj):
            from tokenizers import Tokenizer as _T

            self._fast = _T.from_file(tj)
            self.vocab_size = self._fast.get_vocab_size(with_added_tokens=False)
            self.special = set(self._fast.get_added_tokens_decoder().keys())
        elif os.path.isdir(path):
            try:
                from transformers import AutoTokenizer
            except ImportError:
                raise BadInput(
                    "load_test", path, "no tokenizer.json here and transformers is not installed",
                    hint="point --tokenizer at a model folder with tokenizer.json, or leave it out",
                ) from None
            try:
                self._hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except Exception as e:
                raise BadInput("load_test", path, f"cannot load a tokenizer: {e}",
                               hint="point --tokenizer at a model folder with the tokenizer files") from None
            self.vocab_size = self._hf.vocab_size
            self.special = set(self._hf.all_special_ids)
        else:
            raise BadInput("load_test", path, "tokenizer folder not found",
                           hint="pass a local model folder holding tokenizer.json, or leave --tokenizer out")

    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return self._fast.encode(text, add_special_tokens=False).ids
        return self._hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=True)
        return self._hf.decode(ids, skip_special_tokens=True)

    def count(self, text: str) -> int:
        return len(self.encode(text))


def _word_tokens(tok: Tokenizer, rng: np.random.Generator, want: int = 2000, tries: int = 20000) -> list[str]:
    """Vocabulary entries that are one space-led ASCII word and encode back to themselves alone.

    Joined, such words re-encode to one token each (pre-tokenizers split at the spaces), so a
    prompt of n of them is exactly n tokens without trial and error.
    """
    ids = rng.permutation(tok.vocab_size)[:tries]
    out = []
    for i in ids.tolist():
        if i in tok.special:
            continue
        s = tok.decode([i])
        if len(s) >= 3 and s[0] == " " and s[1:].isascii() and s[1:].isalpha() and tok.encode(s) == [i]:
            out.append(s)
            if len(out) >= want:
                break
    return out


def _exact_prompt(tok: Tokenizer, rng: np.random.Generator, n: int, words: list[str]) -> str | None:
    """Text that encodes to exactly n tokens: space-led vocabulary words, else random tokens adjusted."""
    if len(words) >= 20:
        text = "".join(rng.choice(words, size=n))
        if len(tok.encode(text)) == n:
            return text
    ids = [int(i) for i in rng.integers(0, tok.vocab_size, size=n) if int(i) not in tok.special]
    for _ in range(12):
        while len(ids) < n:
            i = int(rng.integers(0, tok.vocab_size))
            if i not in tok.special:
                ids.append(i)
        text = tok.decode(ids[:n])
        got = tok.encode(text)
        if len(got) == n:
            return text
        ids = got
        if len(ids) > n:
            ids = ids[:n]
    return None


def synthetic_prompts(profile: LoadProfile, count: int, tok: Tokenizer | None) -> list[Prompt]:
    rng = np.random.default_rng(profile.seed)
    out = []
    n_in = profile.input_tokens
    words = _word_tokens(tok, rng) if tok is not None else []
    for i in range(count):
        if tok is not None:
            text = _exact_prompt(tok, rng, n_in, words)
            if text is None:  # a tokenizer that will not round-trip: fall back to a count
                text = " ".join(rng.choice(_WORDS, size=n_in))
                out.append(Prompt(text, tok.count(text), profile.output_tokens, True))
            else:
                out.append(Prompt(text, n_in, profile.output_tokens, True))
        else:
            # A leading number keeps prompts distinct, so prefix caching cannot flatter TTFT.
            words = [str(i)] + list(rng.choice(_WORDS, size=max(0, n_in - 1)))
            out.append(Prompt(" ".join(words), n_in, profile.output_tokens, False))
    return out


def jsonl_prompts(path: str, profile: LoadProfile, tok: Tokenizer | None) -> list[Prompt]:
    """One JSON object a line: `prompt` (or `text`) or `messages`; optional `output_tokens` / `max_tokens`."""
    if not os.path.isfile(path):
        raise BadInput("load_test", path, "dataset file not found", hint="pass a JSONL file of prompts")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise BadInput("load_test", f"{path}:{lineno}", f"not JSON: {e}",
                               hint='write one object a line, e.g. {"prompt": "..."}') from None
            content = obj.get("prompt", obj.get("text", obj.get("messages"))) if isinstance(obj, dict) else None
            if not content:
                raise BadInput("load_test", f"{path}:{lineno}", "no prompt, text or messages",
                               hint='write one object a line, e.g. {"prompt": "..."}')
            n_out = int(obj.get("output_tokens") or obj.get("max_tokens") or profile.output_tokens)
            text = content if isinstance(content, str) else " ".join(str(m.get("content", "")) for m in content)
            if tok is not None:
                out.append(Prompt(content, tok.count(text), n_out, True))
            else:
                out.append(Prompt(content, max(1, round(len(text.split()) * 1.3)), n_out, False))
    if not out:
        raise BadInput("load_test", path, "the dataset has no prompts", hint="add lines like {\"prompt\": \"...\"}")
    rng = np.random.default_rng(profile.seed)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def prepare_prompts(profile: LoadProfile, tokenizer: str | None, expected_requests: int) -> tuple[list[Prompt], Tokenizer | None]:
    tok = Tokenizer(tokenizer) if tokenizer else None
    if profile.dataset:
        return jsonl_prompts(profile.dataset, profile, tok), tok
    count = max(1, min(expected_requests, MAX_DISTINCT_PROMPTS))
    return synthetic_prompts(profile, count, tok), tok


def request_body(model: str, prompt: Prompt, chat: bool, ignore_eos: bool) -> bytes:
    body: dict[str, Any] = {"model": model}
    if chat:
        body["messages"] = (
            prompt.content if isinstance(prompt.content, list) else [{"role": "user", "content": prompt.content}]
        )
    else:
        body["prompt"] = prompt.content
    body["max_tokens"] = prompt.output_tokens
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    return json.dumps(body, separators=(",", ":")).encode()
