"""Atomic, deterministic artifact writing and reading.

Every artifact is first written to a temporary file next to its final name and
then renamed into place (``os.replace`` is atomic on POSIX), so a killed job
never leaves a half-written file under a final name. Parquet files are written
deterministically (fixed row-group size, no pandas index, metadata without
timestamps) so that the same inputs give byte-identical files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # annotations only: io stays importable without torch
    import torch


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it to ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix or final.suffix or ".tmp", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``df`` atomically and deterministically; ``metadata`` goes into the file's schema."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    # pandas metadata carries library versions only; replace it by our own provenance
    meta = {}
    if metadata:
        meta[b"provenance"] = json.dumps(metadata, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=1 << 20, compression="zstd", write_statistics=True)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    from .errors import UserError

    try:
        with open(path, "rb") as f:  # one open file: a consistent read even if the path is replaced meanwhile
            return pq.read_table(f).to_pandas()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None


def parquet_provenance(path: str | os.PathLike) -> dict:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"provenance")
    return json.loads(raw) if raw else {}


# --- text files: the one reader every text format goes through ------------------------------------

ENCODINGS = ("utf-8", "utf-8-or-latin-1")  # the second: lines that are not UTF-8 are read as Latin-1


def _not_utf8(path, raw: bytes, err: UnicodeDecodeError, offset: int = 0, line: int | None = None, hint: str = ""):
    from .errors import UserError

    start = offset + err.start
    if line is None:
        line = raw.count(b"\n", 0, err.start) + 1
    return UserError(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {start}); "
                     f"re-save the file as UTF-8{hint}")


def _read_bytes(path: str | os.PathLike, what: str) -> bytes:
    from .errors import UserError

    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a folder, not a file") from None
    except (OSError, ValueError) as e:  # permissions, a name too long for the file system, ...
        raise UserError(f"{path}: {what} cannot be read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None


def read_text(path: str | os.PathLike, what: str = "file", encoding: str = "utf-8", hint: str = "") -> str:
    """The whole text of ``path``: UTF-8 (a byte-order mark is dropped), or one ``UserError``
    ``FILE: line N: not valid UTF-8 ...``; a missing or unreadable file is a ``UserError`` naming
    ``what``. ``encoding="utf-8-or-latin-1"`` (formats that allow it, e.g. word-vector files) reads
    each line that is not UTF-8 as Latin-1 instead. Every reader of a text format calls this (or
    ``iter_lines`` for files too large to hold). ``hint`` ends the not-UTF-8 message (the option to set)."""
    raw = _read_bytes(path, what)
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if encoding == "utf-8":
            raise _not_utf8(path, raw, e, hint=hint) from None
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    return "".join(_decode_line(line, encoding)[0] for line in raw.splitlines(keepends=True))


def _decode_line(line: bytes, encoding: str) -> tuple[str, bool]:
    """(text, whether it was read as Latin-1)."""
    try:
        return line.decode("utf-8"), False
    except UnicodeDecodeError:
        if encoding == "utf-8":
            raise
        return line.decode("latin-1"), True


def iter_lines(path: str | os.PathLike, what: str = "file", encoding: str = "utf-8", stats: dict | None = None,
               hint: str = ""):
    """``(line number, text without the newline)`` of a text file, streamed (word-vector files run
    to gigabytes); decoding as ``read_text``. ``stats["latin1_lines"]`` counts lines read as Latin-1."""
    from .errors import UserError

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a folder, not a file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: {what} cannot be read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None
    with f:
        offset = 0
        for n, line in enumerate(f, 1):
            if n == 1 and line.startswith(b"\xef\xbb\xbf"):
                line, offset = line[3:], 3
            try:
                text, latin1 = _decode_line(line, encoding)
            except UnicodeDecodeError as e:
                raise _not_utf8(path, line, e, offset, n, hint) from None
            if latin1 and stats is not None:
                stats["latin1_lines"] = stats.get("latin1_lines", 0) + 1
            offset += len(line)
            yield n, text.rstrip("\r\n")


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def parse_json(text: str, where: str, expect: type | None = None, expected: str = "", line: int | None = None) -> Any:
    """``json.loads(text)``, or a ``UserError`` ``WHERE: line N: not valid JSON (reason)``; with ``expect``,
    a value of another type is a ``UserError`` ``WHERE: EXPECTED``. ``line``: the text is that line of
    the file (JSON Lines), so errors name it."""
    from .errors import UserError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: line {line or e.lineno}: not valid JSON ({e.msg})") from None
    if expect is not None and not isinstance(data, expect):
        raise UserError(f"{where}: {f'line {line}: ' if line else ''}{expected}")
    return data


def read_json(path: str | os.PathLike) -> Any:
    return parse_json(read_text(path), str(path))


def save_tensors(tensors: Mapping[str, "torch.Tensor"], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """safetensors with the metadata as one sorted JSON string under ``provenance``.

    One key keeps the file byte-identical across runs (safetensors orders several metadata
    keys arbitrarily); ``load_tensors`` decodes it back into a dict.
    """
    from safetensors.torch import save_file

    meta = {"provenance": json.dumps(dict(metadata or {}), sort_keys=True, default=str)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """Return (tensors, metadata) of a safetensors file."""
    from safetensors import safe_open

    from .errors import UserError

    if not Path(path).exists():
        raise UserError(f"{path}: file not found")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            meta = json.loads(raw.pop("provenance")) if "provenance" in raw else {}
            meta.update(raw)  # files written by other tools: plain string metadata
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors parses a header and raw bytes only, never code
        raise UserError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    return tensors, meta


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
