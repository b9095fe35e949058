"""The training data's token lengths as the engine will see them, without mlx: what sizes a step.

A step's memory is set by its widest batch (length-sorted batches: the `batch_size` longest examples) and by how
many of its positions the loss counts (the completion after the masked prompt). The longest examples by characters
are tokenized exactly as mlx-lm's dataset classes do (the model's Hugging Face tokenizer and chat template, through
transformers); the share the loss counts comes from a sample. Without a tokenizer the lengths are estimated from the
characters (CHARS_PER_TOKEN) and said to be; so are they when the tokenizer or its chat template fails on the data
(mlx-lm would fail too: the doctor plans, other lines judge), and for an example too long to tokenize quickly.
The file is read twice, line by line: what is kept is the lengths, never the records.
"""

from __future__ import annotations

import ctypes
import heapq
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.storage.regular import open_regular

CHARS_PER_TOKEN = 3.5  # a rough average for BPE vocabularies on English/Portuguese text
LONGEST = 64  # examples tokenized exactly among the longest by characters
SAMPLE = 256  # examples tokenized for the counted share
MAX_LINE = 16 << 20  # a data line larger than this is not read here (datacheck refuses it before training)
# an example of more characters than CHARS_PER_LIMIT x max_seq_length is longer than that whatever the tokenizer: it
# is estimated (and clipped alike), not tokenized; so is one of more than RECORD_CHARS (below SHORT_CHARS: tokenized)
CHARS_PER_LIMIT, SHORT_CHARS, RECORD_CHARS = 8, 1 << 12, 1 << 18
TOTAL_CHARS = 16 << 20  # characters tokenized in all (the longest first); past them the rest is estimated
TOKENIZE_SECONDS = 20.0  # the doctor's time to tokenize in all: a chat template that loops is estimated, not awaited


class _Abandoned(BaseException):
    """Raised inside a tokenizing thread the doctor stopped waiting for."""


def _stop(thread: threading.Thread) -> None:
    """Ask `thread` to raise _Abandoned at its next Python instruction: a chat template is Jinja compiled to Python, so
    a template that loops stops there instead of burning a core until the process ends (a tokenizer busy in native
    code stops when it returns)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned))


def _within(call, seconds: float):
    """call()'s result if it returns within `seconds`, else TimeoutError (and the call is stopped)."""
    box: dict = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it was
            box["error"] = exc

    thread = threading.Thread(target=run, name="doctor-tokenize", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        _stop(thread)
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class DataLengths:
    """Token lengths of the longest examples, (length, prompt offset) each, longest first; the share of all
    positions the loss counts; the number of examples; how the lengths were found ('tokenizer' or 'estimate')."""

    longest: list[tuple[int, int]]
    counted_share: float
    examples: int
    total_tokens: int
    source: str


def _records(f):
    """(index, offset, size, record) of each JSON object line of at most MAX_LINE bytes; a longer line is skipped
    in pieces, never held whole; a blank line, or one that is not a JSON object, is no example."""
    index, offset = 0, f.tell()
    while line := f.readline(MAX_LINE + 1):
        at, offset = offset, offset + len(line)
        if len(line) > MAX_LINE:
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 20)
                offset += len(line)
            continue
        if line.strip():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield index, at, len(line.strip()), record
                index += 1


def _parts(record: dict) -> tuple[list | None, str, str]:
    """(messages for the chat template or None, prompt text, completion text) of one mlx-lm record."""
    if isinstance(record.get("messages"), list):
        messages = [m for m in record["messages"] if isinstance(m, dict)]
        prompt = " ".join(str(m.get("content", "")) for m in messages[:-1])
        return messages, prompt, str(messages[-1].get("content", "")) if messages else ""
    if "prompt" in record:
        prompt, completion = str(record.get("prompt", "")), str(record.get("completion", ""))
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], prompt, completion
    return None, "", str(record.get("text", ""))


def _tokenizer(model_dir: Path | None):
    if model_dir is None or not (Path(model_dir) / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception:  # any tokenizer transformers cannot load here: the estimate instead
        return None


def _tokens(tokenizer, record: dict, mask_prompt: bool) -> tuple[int, int]:
    """(length, prompt offset) as mlx-lm's ChatDataset / CompletionsDataset / TextDataset produce them."""
    messages, _prompt, text = _parts(record)
    if messages is None:
        ids = tokenizer.encode(text)
        return len(ids) + (ids[-1:] != [tokenizer.eos_token_id]), 0
    length = len(tokenizer.apply_chat_template(messages, return_dict=False))
    if not mask_prompt:
        return length, 0
    generation = messages[-1].get("role") == "assistant"
    offset = len(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=generation, return_dict=False))
    return length, offset


def _estimate(record: dict, mask_prompt: bool) -> tuple[int, int]:
    messages, prompt, completion = _parts(record)
    overhead = 6 * len(messages or [])  # role markers of a chat template
    prompt_tokens = int(len(prompt) / CHARS_PER_TOKEN) + overhead
    total = prompt_tokens + int(len(completion) / CHARS_PER_TOKEN) + 2
    return total, prompt_tokens if mask_prompt and messages is not None else 0


def _chars(record: dict) -> int:
    messages, prompt, completion = _parts(record)
    return len(prompt) + len(completion) + 16 * len(messages or [])


class _Measure:
    """(length, prompt offset) of a record: tokenized while the tokenizer works and the budgets last, else
    estimated from the characters (`estimated` says whether any was)."""

    def __init__(self, tokenizer, mask_prompt: bool, max_seq_length: int):
        self.tokenizer, self.mask_prompt = tokenizer, mask_prompt
        self.most = min(max(CHARS_PER_LIMIT * max_seq_length, SHORT_CHARS), RECORD_CHARS)
        self.left, self.estimated = TOTAL_CHARS, tokenizer is None
        self.deadline = time.monotonic() + TOKENIZE_SECONDS

    def __call__(self, record: dict) -> tuple[int, int]:
        size = _chars(record) if self.tokenizer is not None else 0
        if self.tokenizer is not None and size <= min(self.most, self.left):
            self.left -= size
            tokenizer, left = self.tokenizer, self.deadline - time.monotonic()
            try:
                return _within(lambda: _tokens(tokenizer, record, self.mask_prompt), left)
            except Exception:  # a template that refuses this data (mlx-lm would fail too), or one that takes
                self.tokenizer = None  # longer than the doctor may wait: estimate from here on
        self.estimated = True
        return _estimate(record, self.mask_prompt)


def data_lengths(train_file: Path, model_dir: Path | None, mask_prompt: bool, max_seq_length: int) -> DataLengths:
    """The lengths that size a step of this data (truncated to max_seq_length, as the trainer truncates)."""
    measure, measured = _Measure(_tokenizer(model_dir), mask_prompt, max_seq_length), {}
    with open_regular(train_file) as f:
        count, top = 0, []  # first pass: how many examples, the longest by bytes (and where they start)
        for index, at, size, _record in _records(f):
            count = index + 1
            if len(top) < LONGEST:
                heapq.heappush(top, (size, -index, at))
            elif (size, -index) > top[0][:2]:
                heapq.heapreplace(top, (size, -index, at))
        longest_lines = [-i for _n, i, _at in sorted(top, reverse=True)]
        for index, at in zip(longest_lines, (at for *_, at in sorted(top, reverse=True))):
            f.seek(at)  # the longest measured first, while the budget lasts
            if (found := next(_records(f), None)) is not None:  # None: the file changed meanwhile
                measured[index] = measure(found[3])
        sampled = range(0, count, max(1, count // SAMPLE))
        wanted = set(sampled) - set(measured)
        f.seek(0)  # second pass: the sample
        for index, _at, _size, record in _records(f):
            if index in wanted:
                measured[index] = measure(record)
    longest = sorted((measured[i] for i in longest_lines if i in measured), reverse=True)
    sample = [measured[i] for i in sampled if i in measured]
    clipped = [(min(n, max_seq_length), o) for n, o in longest]
    counted = sum(max(0, min(n, max_seq_length) - o) for n, o in sample)
    tokens = sum(min(n, max_seq_length) for n, _o in sample)
    total = int(tokens * count / max(len(sample), 1))
    source = "estimate" if measure.estimated else "tokenizer"
    return DataLengths(clipped, counted / max(tokens, 1), count, total, source)
