"""The reward ledger: an append-only, crash-safe record of every paid reward evaluation."""

import fcntl
import json
import logging
import math
import os
from typing import Any


logger = logging.getLogger(__name__)

LEDGER_NAME = "banel_ledger.jsonl"


def sample_key(prompt: Any, completion: Any) -> str:
    """Identity of a candidate: the same prompt and completion are never paid for twice."""
    return json.dumps([prompt, completion], sort_keys=True, ensure_ascii=False)


def _json_safe(value: float | None) -> float | None:
    # JSON has no NaN/inf: keep the file strictly valid, the ledger stores `null` for "no reward".
    return value if value is not None and math.isfinite(value) else None


class RewardLedger:
    """
    Append-only JSON-lines file of every reward evaluation of a run, one line per evaluation.

    A record is written, flushed and fsync'ed *before* the evaluation counts anywhere else, so a crash never loses a
    paid evaluation; re-opening the file restores them all. A torn last line (a crash mid-write) is detected and cut
    off with a warning. The file is locked while open, so two runs cannot write to the same ledger.

    Two kinds of line. A paid evaluation has the keys `index` (0, 1, ... over paid evaluations), `round`, `prompt`,
    `completion`, `completion_ids`, `rewards` (one per reward function, `null` for None/NaN), `reward` (the weighted
    sum, `null` when no function gave one) and `success`. A free repeat, `{"round": k, "repeat_of": index}`, records
    that round `k` sampled again a candidate already paid for: it is part of that round's sample of the posterior but
    costs nothing.
    """

    def __init__(self, output_dir: str):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, LEDGER_NAME)
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(
                f"Another BaNEL run is writing to {self.path}. Use a different `output_dir`, or wait for it to finish."
            ) from None
        lines = self._load()
        self.records: list[dict] = [line for line in lines if "repeat_of" not in line]
        self.repeats: list[dict] = [line for line in lines if "repeat_of" in line]
        self._by_key = {sample_key(r["prompt"], r["completion"]): r for r in self.records}

    def _load(self) -> list[dict]:
        self._file.seek(0)
        data = self._file.read()
        lines = data.split(b"\n")
        # Everything before the last newline was written whole; what follows it is a torn write.
        complete, torn = lines[:-1], lines[-1]
        records = []
        for number, line in enumerate(complete, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}, line {number}, is corrupt ({error}); refusing to resume.") from None
        if torn:
            logger.warning(f"Dropping a torn last line of {self.path} ({len(torn)} bytes): it was never complete.")
            self._file.truncate(len(data) - len(torn))
        return records

    def __len__(self) -> int:
        """The number of paid evaluations."""
        return len(self.records)

    def lookup(self, prompt: Any, completion: Any) -> dict | None:
        return self._by_key.get(sample_key(prompt, completion))

    def samples_of_round(self, round_index: int) -> list[dict]:
        """Every sample round `round_index` drew and knows the reward of: its paid evaluations and its free repeats."""
        paid = [r for r in self.records if r["round"] == round_index]
        return paid + [self.records[line["repeat_of"]] for line in self.repeats if line["round"] == round_index]

    def append(self, records: list[dict]) -> None:
        """Write paid evaluations durably, then index them."""
        for offset, record in enumerate(records):
            record["index"] = len(self.records) + offset
            record["reward"] = _json_safe(record["reward"])
            record["rewards"] = [_json_safe(r) for r in record["rewards"]]
        self._write(records)
        for record in records:
            self.records.append(record)
            self._by_key[sample_key(record["prompt"], record["completion"])] = record

    def append_repeats(self, round_index: int, indices: list[int]) -> None:
        """Record that round `round_index` sampled the paid evaluations `indices` again (free)."""
        lines = [{"round": round_index, "repeat_of": index} for index in indices]
        self._write(lines)
        self.repeats.extend(lines)

    def _write(self, lines: list[dict]) -> None:
        if not lines:
            return
        self._file.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
