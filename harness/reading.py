"""The one reader for every file the harness reads: text (encoding, byte-order marks, Unicode normalisation),
JSON, JSONL, YAML and safetensors, with damage reported as a BenchError that names the file and the fix.

Text is decoded as UTF-8; a UTF-8 byte-order mark (Windows editors, Excel) is dropped, and UTF-16/UTF-32 files
with a byte-order mark are decoded, since the mark makes them unambiguous. Anything else that is not UTF-8
(latin-1, cp1254, UTF-16 without a mark) is refused with the iconv command that converts it: latin-1 and
cp1254 differ exactly on Turkish letters (ı ş ğ), so guessing would corrupt the data silently.

Every text is normalised to NFC here (`normalise_text`), so a decomposed 'İ' (I + U+0307) and the precomposed
one are the same string for de-duplication, training and scoring.
"""

from __future__ import annotations

import codecs
import json
import unicodedata
from pathlib import Path
from typing import Any

from harness.errors import BenchError

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_DAMAGED = "Restore the file, or delete it and rerun the step that wrote it."


def normalise_text(text: str) -> str:
    """NFC: composed letters, so equal-looking Turkish text is equal (and a stray BOM character is gone)."""
    return unicodedata.normalize("NFC", text.replace("\ufeff", ""))


def decode_text(raw: bytes, what: str, name: str) -> str:
    """Bytes of a text file -> normalised str; `what` (the option or field) and `name` go into errors."""
    for mark, encoding in _MARKS:
        if raw.startswith(mark):
            try:
                return normalise_text(raw[len(mark):].decode(encoding))
            except UnicodeDecodeError as exc:
                raise BenchError(f"{what}: '{name}' starts with a {encoding.upper()} byte-order mark but is not "
                                 f"valid {encoding.upper()} (byte {exc.start}). The file is damaged; save it "
                                 "again as UTF-8.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        if raw[:200].count(b"\x00") > len(raw[:200]) // 4:
            raise BenchError(f"{what}: '{name}' looks like UTF-16 text without a byte-order mark, which cannot be "
                             "told apart safely. Convert it to UTF-8, e.g. iconv -f UTF-16LE -t UTF-8 "
                             f"'{name}' > converted.txt, and give that file.") from None
        raise BenchError(f"{what}: '{name}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); it "
                         "is probably in a legacy encoding such as Windows-1254 (Turkish) or Latin-1. Convert it "
                         f"to UTF-8, e.g. iconv -f CP1254 -t UTF-8 '{name}' > converted.txt (use -f LATIN1 if it "
                         "is Latin-1), and give that file.") from None
    if "\x00" in text:
        raise BenchError(f"{what}: '{name}' holds NUL bytes, so it is not a text file (a binary or UTF-16 file "
                         "without a byte-order mark?). Give a UTF-8 text file.")
    return normalise_text(text)


def read_text(path: str | Path, what: str) -> str:
    """A text file, decoded and normalised (see the module docstring)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{what}: the file '{path}' does not exist. Check the path.") from None
    except IsADirectoryError:
        raise BenchError(f"{what}: '{path}' is a folder, not a file. Give the file inside it.") from None
    except PermissionError:
        raise BenchError(f"{what}: the file '{path}' cannot be read (permission denied). Fix its "
                         "permissions, e.g. chmod u+r.") from None
    return decode_text(raw, what, str(path))


def read_json(path: str | Path, what: str = "file", fix: str = _DAMAGED) -> Any:
    """A JSON file; a truncated or malformed one is a BenchError naming the file, the place and `fix`."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{what}: '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         f"it is truncated or damaged. {fix}") from None


def read_jsonl(path: str | Path, what: str = "file", fix: str = _DAMAGED) -> list[Any]:
    """The rows of a JSONL file ([] when there is none); a bad line is a BenchError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(read_text(path, what).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BenchError(f"{what}: {path}:{lineno} is not valid JSON ({exc.msg}); the line is truncated or "
                             f"damaged. {fix}") from None
    return rows


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file (safe loader); a syntax error names the line and column."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(read_text(path, what))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BenchError(f"{what}: '{path}' is not valid YAML{where} ({getattr(exc, 'problem', exc)}). "
                         "Fix the syntax, e.g. 'train:\\n  lr: 0.0003'.") from None


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a complete safetensors file (None when it is): checks the header and that the file
    holds every byte the header promises, without reading the tensors."""
    path = Path(path)
    if not path.is_file():
        return "the file is missing"
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"it has {size} bytes, fewer than a safetensors header needs (a truncated copy)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"its header announces {length} bytes but the file has only {size} (a truncated copy)"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its header is not valid JSON (not a safetensors file, or damaged)"
    if not isinstance(header, dict):
        return "its header is not a safetensors header (not a safetensors file, or damaged)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "its header lists tensors without valid offsets (not a safetensors file, or damaged)"
    if 8 + length + end > size:
        return f"it has {size} bytes but its tensors need {8 + length + end} (a truncated copy)"
    return None


def check_safetensors(path: str | Path, what: str, fix: str) -> None:
    """A BenchError naming the file, what is wrong with it and `fix`, unless it is a complete safetensors file."""
    problem = safetensors_problem(path)
    if problem:
        raise BenchError(f"{what}: '{path}' cannot be loaded: {problem}. {fix}")


def load_safetensors(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """All tensors of a safetensors file (on the CPU), after `check_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path, what, fix)
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise BenchError(f"{what}: '{path}' cannot be loaded ({exc}). {fix}") from None
