"""The reward ledger: an append-only, crash-safe record of every paid reward evaluation."""

import fcntl
import hashlib
import json
import logging
import math
import os
from typing import Any


logger = logging.getLogger(__name__)

LEDGER_NAME = "banel_ledger.jsonl"  # the training rounds' reward evaluations
EVAL_LEDGER_NAME = "banel_eval_ledger.jsonl"  # `evaluate()`'s, on their own budget
HITS_NAME = "successes.jsonl"  # every distinct success of the run, from both ledgers


def sample_key(prompt: Any, completion: Any) -> str:
    """Identity of a candidate: the same prompt and completion are never paid for twice."""
    return json.dumps([prompt, completion], sort_keys=True, ensure_ascii=False)


RECORD_KEYS = ("index", "round", "prompt", "completion", "completion_ids", "rewards", "reward", "success")
REPAIR = "Restore the ledger from a backup, or start a new run in another output_dir."


def canonical_json(line: dict) -> str:
    """One ledger line as canonical JSON (sorted keys, no spaces): what [`~RewardLedger.fingerprint`] hashes."""
    return json.dumps(line, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_lines(data: list[bytes], path: str) -> list[dict]:
    """
    The lines `data` of the ledger at `path`, each checked to be one of the three kinds of line, in order (records
    numbered 0, 1, ..., repeats of records before them): anything else is refused with the file and the line named.
    """
    lines, num_records = [], 0
    for number, raw in enumerate(data, start=1):
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}, line {number}, is corrupt ({error}); refusing to resume. {REPAIR}") from None
        if not isinstance(line, dict) or not isinstance(line.get("round"), int):
            kind = None
        elif "repeat_of" in line:
            kind = isinstance(line["repeat_of"], int) and 0 <= line["repeat_of"] < num_records
        elif "end" in line:
            kind = isinstance(line["end"], dict)
        else:
            kind = all(key in line for key in RECORD_KEYS) and line["index"] == num_records
            num_records += bool(kind)
        if not kind:
            shown = raw[:200].decode(errors="replace")
            raise ValueError(
                f"{path}, line {number}, is not a ledger line (a paid evaluation numbered {num_records}, a free "
                f"repeat of an earlier one, or a round's end): {shown}. The ledger was edited or replaced; refusing "
                f"to resume. {REPAIR}"
            )
        lines.append(line)
    return lines


def _json_safe(value: float | None) -> float | None:
    # JSON has no NaN/inf: keep the file strictly valid, the ledger stores `null` for "no reward".
    return value if value is not None and math.isfinite(value) else None


class RewardLedger:
    """
    Append-only JSON-lines file of every reward evaluation of a run, one line per evaluation.

    A record is written, flushed and fsync'ed *before* the evaluation counts anywhere else, so a crash never loses a
    paid evaluation whose result was written; re-opening the file restores them all. A torn last line (a crash
    mid-write) is detected and cut off with a warning. The file is locked while open, so two runs cannot write to the
    same ledger: the second is refused.

    Three kinds of line. A paid evaluation has the keys `index` (0, 1, ... over paid evaluations), `round`, `prompt`,
    `completion`, `completion_ids`, `rewards` (one per reward function, `null` for None/NaN), `reward` (the weighted
    sum, `null` when no function gave one) and `success`. A free repeat, `{"round": k, "repeat_of": index}`, records
    that round `k` sampled again a candidate already paid for: it is part of that round's sample of the posterior but
    costs nothing. `{"round": k, "end": {...}}` records that round `k` finished sampling, with its figures
    (evaluations, proposals, acceptances, repeats): a resumed run does not sample that round again.

    In a multi-process run only the main process opens the file; the other processes hold a [`~RewardLedger.replica`]
    that the main process keeps up to date with [`~RewardLedger.extend`].
    """

    def __init__(self, output_dir: str, name: str = LEDGER_NAME, hits: "HitsFile | None" = None):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, name)
        self.hits = hits  # where the successes this ledger records are written as they are paid for
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(
                f"Another BaNEL run is writing to {self.path}. Use a different `output_dir`, or wait for it to finish."
            ) from None
        try:
            self._reset()
            self.extend(self._load())
        except BaseException:
            self._file.close()  # a refused ledger leaves no lock behind, even while its error is kept
            raise

    @classmethod
    def replica(cls, lines: list[dict]) -> "RewardLedger":
        """An in-memory, read-only copy of a ledger's `lines` (non-main processes of a multi-process run)."""
        ledger = cls.__new__(cls)
        ledger.path, ledger._file, ledger.hits = None, None, None
        ledger._reset()
        ledger.extend(lines)
        return ledger

    @classmethod
    def read(cls, output_dir: str, name: str = LEDGER_NAME, missing_ok: bool = False) -> "RewardLedger":
        """
        A read-only copy of the ledger `name` in `output_dir`, read without its lock, so that a run still in progress
        can be reported on: its complete lines (a torn last line, still being written or left by a crash, is skipped).
        A missing file is refused, or with `missing_ok` read as an empty ledger.
        """
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            if missing_ok:
                return cls.replica([])
            raise FileNotFoundError(f"{output_dir} has no {name}: it is not the output_dir of a BaNEL run.")
        with open(path, "rb") as file:
            lines = file.read().split(b"\n")[:-1]
        ledger = cls.replica(parse_lines(lines, path))
        ledger.path = path
        return ledger

    def _reset(self) -> None:
        self.lines: list[dict] = []  # every line, in file order
        self.records: list[dict] = []  # the paid evaluations; `records[i]["index"] == i`
        self.repeats: list[dict] = []
        self.round_ends: dict[int, dict] = {}
        self._by_key: dict[str, dict] = {}

    def _load(self) -> list[dict]:
        self._file.seek(0)
        data = self._file.read()
        lines = data.split(b"\n")
        # Everything before the last newline was written whole; what follows it is a torn write.
        complete, torn = lines[:-1], lines[-1]
        records = parse_lines(complete, self.path)
        if torn:
            logger.warning(f"Dropping a torn last line of {self.path} ({len(torn)} bytes): it was never complete.")
            self._file.truncate(len(data) - len(torn))
            self._file.flush()
            os.fsync(self._file.fileno())
        return records

    def __len__(self) -> int:
        """The number of paid evaluations."""
        return len(self.records)

    def fingerprint(self, num_lines: int | None = None) -> dict:
        """
        `{"lines": n, "sha256": ...}`: the number of lines and the sha256 of the first `num_lines` lines (all by
        default) as canonical JSON, one a line. A posterior records the ledger its regions were fit on with it; the
        ledger only grows, so a later ledger of the same run starts with those lines.
        """
        lines = self.lines if num_lines is None else self.lines[:num_lines]
        digest = hashlib.sha256()
        for line in lines:
            digest.update((canonical_json(line) + "\n").encode())
        return {"lines": len(lines), "sha256": digest.hexdigest()}

    def starts_with(self, fingerprint: dict) -> bool:
        """Whether the ledger's first lines are those `fingerprint` (of [`~RewardLedger.fingerprint`]) records."""
        return len(self.lines) >= fingerprint["lines"] and self.fingerprint(fingerprint["lines"]) == fingerprint

    @property
    def closed(self) -> bool:
        """Whether the file is closed (its lock released); a replica is always closed."""
        return self._file is None or self._file.closed

    def lookup(self, prompt: Any, completion: Any) -> dict | None:
        return self._by_key.get(sample_key(prompt, completion))

    def is_known_success(self, prompt: Any, completion: Any) -> bool:
        """Whether the sample was paid for and succeeded."""
        record = self.lookup(prompt, completion)
        return record is not None and record["success"]

    def paid_in_round(self, round_index: int) -> list[dict]:
        """Round `round_index`'s paid evaluations: each of its distinct samples once."""
        return [r for r in self.records if r["round"] == round_index]

    def repeated_in_round(self, round_index: int) -> list[dict]:
        """The paid evaluations round `round_index` drew again as free repeats, once per repeat."""
        return [self.records[line["repeat_of"]] for line in self.repeats if line["round"] == round_index]

    def samples_of_round(self, round_index: int) -> list[dict]:
        """Every sample round `round_index` drew and knows the reward of: its paid evaluations and its free repeats."""
        return self.paid_in_round(round_index) + self.repeated_in_round(round_index)

    def replay(self, round_index: int) -> "RoundReplay":
        """What round `round_index` wrote before an interruption, for the resumed round to meet again."""
        return RoundReplay(self.lines_of_round(round_index))

    def lines_of_round(self, round_index: int) -> list[dict]:
        """Round `round_index`'s paid evaluations and free repeats, in the order they were written."""
        return [line for line in self.lines if line["round"] == round_index and "end" not in line]

    def append(self, records: list[dict]) -> None:
        """Write paid evaluations durably, then index them, and add their successes to the hits file."""
        for offset, record in enumerate(records):
            record["index"] = len(self.records) + offset
            record["reward"] = _json_safe(record["reward"])
            record["rewards"] = [_json_safe(r) for r in record["rewards"]]
        self._write(records)
        self.extend(records)
        if self.hits is not None:
            self.hits.add([record for record in records if record["success"]], os.path.basename(self.path))

    def append_repeats(self, round_index: int, indices: list[int]) -> None:
        """Record that round `round_index` sampled the paid evaluations `indices` again (free)."""
        lines = [{"round": round_index, "repeat_of": index} for index in indices]
        self._write(lines)
        self.extend(lines)

    def end_round(self, round_index: int, stats: dict) -> None:
        """Record that round `round_index` finished sampling, with its figures."""
        line = {"round": round_index, "end": stats}
        self._write([line])
        self.extend([line])

    def extend(self, lines: list[dict]) -> None:
        """Index lines already written (read back from the file, or received from the main process)."""
        for line in lines:
            self.lines.append(line)
            if "repeat_of" in line:
                self.repeats.append(line)
            elif "end" in line:
                self.round_ends[line["round"]] = line["end"]
            else:
                if line["index"] != len(self.records):
                    raise ValueError(f"Ledger record {line['index']} is out of order (expected {len(self.records)}).")
                self.records.append(line)
                self._by_key[sample_key(line["prompt"], line["completion"])] = line

    def _write(self, lines: list[dict]) -> None:
        if not lines:
            return
        if self.closed:
            raise RuntimeError("The ledger is closed (or a read-only replica): it cannot record evaluations.")
        self._file.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file and release its lock; the records stay readable."""
        if not self.closed:
            self._file.close()


class RoundReplay:
    """
    The evaluations and free repeats a round wrote before an interruption. The resumed round samples again from its
    seed and so draws the same candidates in the same order: each is met again here and reused, never paid or recorded
    twice. `pending` holds the indices of the paid evaluations not met again yet.
    """

    def __init__(self, lines: list[dict]):
        self.pending = {line["index"] for line in lines if "repeat_of" not in line}
        self._repeats = sum("repeat_of" in line for line in lines)

    def meets(self, record: dict | None) -> bool:
        """Whether `record` (a candidate's ledger record, or None) is a paid evaluation met again: it counts once."""
        if record is None or record["index"] not in self.pending:
            return False
        self.pending.discard(record["index"])
        return True

    def abandon(self) -> int:
        """Stop waiting for the pending evaluations (they stay the round's); returns how many there were."""
        num_pending = len(self.pending)
        self.pending.clear()
        return num_pending

    def unwritten_repeats(self, indices: list[int]) -> list[int]:
        """Of a batch's free repeats, in order, those not already written before the interruption."""
        replayed = min(len(indices), self._repeats)
        self._repeats -= replayed
        return indices[replayed:]


class HitsFile:
    """
    `successes.jsonl` in a run's folder: every distinct success of the run once, as it is paid for, from the training
    ledger (`"found_in": "training"`, with its round) or the evaluation ledger (`"evaluation"`): prompt, completion,
    rewards and reward. The ledgers are the record: [`~HitsFile.rewrite`] makes the file again from them when a run
    opens, so a kill between a ledger's write and the file's leaves it complete again.
    """

    SOURCES = {LEDGER_NAME: "training", EVAL_LEDGER_NAME: "evaluation"}
    KEYS = ("prompt", "completion", "rewards", "reward", "round")

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, HITS_NAME)

    def _line(self, record: dict, ledger_name: str) -> str:
        return json.dumps(hit_of(record, ledger_name), ensure_ascii=False) + "\n"

    def rewrite(self, ledgers: dict[str, RewardLedger]) -> None:
        """Write the file afresh, atomically, from `ledgers` (by file name): their successes, in the order paid."""
        lines = [self._line(r, name) for name, ledger in ledgers.items() for r in ledger.records if r["success"]]
        temporary = self.path + ".tmp"
        with open(temporary, "w") as file:
            file.write("".join(lines))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)

    def add(self, records: list[dict], ledger_name: str) -> None:
        """Append the successes `records`, just written to the ledger `ledger_name` (each sample is paid once)."""
        if records:
            with open(self.path, "a") as file:
                file.write("".join(self._line(record, ledger_name) for record in records))
                file.flush()
                os.fsync(file.fileno())


def hit_of(record: dict, ledger_name: str) -> dict:
    """A success's line in the hits file: what was paid for and found, and which ledger paid for it."""
    return {key: record[key] for key in HitsFile.KEYS} | {"found_in": HitsFile.SOURCES[ledger_name]}


def read_hits(output_dir: str) -> list[dict]:
    """The run's distinct successes, rebuilt from its ledgers (what `successes.jsonl` holds once the run is open)."""
    ledgers = {name: RewardLedger.read(output_dir, name, missing_ok=True) for name in HitsFile.SOURCES}
    return [hit_of(r, name) for name, ledger in ledgers.items() for r in ledger.records if r["success"]]
