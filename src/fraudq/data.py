"""Reading labelled and chat-format JSONL, with one-line errors that name the file and line."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from fraudq.errors import BadInput

ROLES = ("system", "user", "assistant")


@dataclass
class Row:
    """One usable row: `messages` for chat files, the labelled fields otherwise."""

    line: int
    id: str
    instruction: str | None = None
    input: str | None = None
    label: bool | None = None
    messages: list[dict] | None = None


@dataclass
class Dataset:
    path: Path
    format: str  # "chat" or "labelled"
    rows: list[Row]
    skipped: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_label(value, where: str) -> bool:
    # bool is a subclass of int, so check it first; 0/1 are accepted, 2 or "yes" are not.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1"):
        return value.strip().lower() in ("true", "1")
    raise BadInput(f"{where}: label must be true/false or 0/1, got {json.dumps(value, ensure_ascii=False)[:40]}")


def _check_encodable(obj, where: str) -> None:
    """A lone surrogate escape ("\\ud800") parses as JSON but cannot be tokenized or written back as UTF-8."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{where}: a string holds an invalid \\u escape (a lone surrogate)") from None


def _parse_messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise BadInput(f"{where}: 'messages' must be a non-empty list")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadInput(f"{where}: messages[{index}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadInput(f"{where}: messages[{index}] has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise BadInput(f"{where}: messages[{index}] field 'content' must be a string")
        messages.append({"role": role, "content": content})
    return messages


def _parse_row(obj, line: int, fmt: str, where: str, need_label: bool) -> Row:
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: expected a JSON object")
    row_id = str(obj.get("id", line))
    if fmt == "chat":
        return Row(line=line, id=row_id, messages=_parse_messages(obj.get("messages"), where))
    dialogue = obj.get("input")
    if not isinstance(dialogue, str):
        raise BadInput(f"{where}: missing field 'input' (a string)")
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise BadInput(f"{where}: field 'instruction' must be a string")
    if "label" not in obj:
        if need_label:
            raise BadInput(f"{where}: missing field 'label'")
        label = None
    else:
        label = parse_label(obj["label"], where)
    return Row(line=line, id=row_id, instruction=instruction, input=dialogue, label=label)


# A dialogue is a few KB; a row past this bound is refused before it is parsed, tokenized or held twice.
MAX_ROW_BYTES = 4 << 20


def _lines(path: Path):
    """The file's rows as text, None for a row past MAX_ROW_BYTES. Only "\n" ends a row: splitlines() would
    also split at U+2028 or U+0085, which JSON strings may hold."""
    offset = 0
    with open(path, "rb") as handle:
        for line_no in itertools.count(1):
            raw = handle.readline(MAX_ROW_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the row in bounded reads
                    offset += len(raw)
                    raw = handle.readline(MAX_ROW_BYTES)
                offset += len(raw)
                yield None
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadInput(f"data file {path} is not UTF-8 (byte {offset + exc.start}); "
                               "re-encode it as UTF-8") from None
            offset += len(raw)
            yield text.removeprefix("\ufeff") if line_no == 1 else text


def read_jsonl(path: str | Path, need_label: bool = True, skip_invalid: bool = False) -> Dataset:
    """Reads every row; the format (chat or labelled) is taken from the first row.

    A bad row stops the read with an error naming the line, unless `skip_invalid` is set.
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(f"data file {path} does not exist")
    if not path.is_file():
        raise BadInput(f"data file {path} is not a file")
    rows: list[Row] = []
    skipped = 0
    fmt = None
    for line_no, line in enumerate(_lines(path), start=1):
        if line is not None and not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            if line is None:
                raise BadInput(f"{where}: the row is longer than {MAX_ROW_BYTES >> 20} MiB; split or shorten it")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            except (ValueError, RecursionError) as exc:  # a 5,000-digit number, or nesting too deep
                raise BadInput(f"{where}: malformed JSON ({type(exc).__name__})") from None
            if "\\u" in line:
                _check_encodable(obj, where)
            if fmt is None and isinstance(obj, dict):
                fmt = "chat" if "messages" in obj else "labelled"
            rows.append(_parse_row(obj, line_no, fmt or "labelled", where, need_label))
        except BadInput:
            if not skip_invalid:
                raise
            skipped += 1
    if not rows:
        raise BadInput(f"data file {path} has no usable rows" + (f" ({skipped} invalid skipped)" if skipped else ""))
    return Dataset(path=path, format=fmt or "labelled", rows=rows, skipped=skipped, sha256=file_sha256(path))
