"""Append-only JSONL caches of the pass@k bench: one line per generated sample, one per executed
program. A line is flushed as soon as its result exists, so an interrupted run loses at most the
requests in flight; a torn last line (a killed process) is ignored on the next load."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path


def digest(*parts: object) -> str:
    """A short stable hash of JSON-serializable parts."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


class JsonlCache:
    """Records keyed by their "key" field; later lines win."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict) and "key" in record:
                        self.records[record["key"]] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(
            self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if torn:  # end the torn line, so the next record starts on a line of its own
            self._file.write("\n")

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def put(self, records: list[dict]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
            for r in records:
                self.records[r["key"]] = r

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
