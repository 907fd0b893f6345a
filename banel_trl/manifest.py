"""The run folder: what a run records about itself (`banel_run.json`), and the checks a resumed run must pass."""

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from transformers.trainer import TRAINER_STATE_NAME

from .distributed import on_main_process
from .ledger import EVAL_LEDGER_NAME, LEDGER_NAME, HitsFile, RewardLedger
from .regions import (
    POSTERIOR_CONFIG_NAME,
    RejectionRegion,
    read_posterior_config,
    read_proposal_weights,
    read_region_weights,
    read_regions,
)


logger = logging.getLogger(__name__)

MANIFEST_NAME = "banel_run.json"
FORCE = "force"  # `train(resume_from_checkpoint=FORCE)`: resume although the settings differ from the manifest's
# The settings that decide what a run samples, pays for and fits (`BanelConfig._RECORDED_FIELDS`) are recorded: a
# resume that changes one is not the same run. `max_sampling_attempts`, `num_rounds`, logging and saving may change;
# the budget may go up.
LORA_SETTINGS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")
# Never overridden by FORCE: a changed share per round renumbers the rounds the ledger records (`num_rounds` follows
# from it), so paid evaluations of an unfinished round would never be fit.
UNFORCEABLE = ("samples_per_round",)
FINGERPRINT_ELEMENTS = 65_536
REPAIR = "restore it from a backup, or start a new run in another output_dir"


class RunFolderError(ValueError):
    """Raised when `train()` is asked to resume a run whose `output_dir` says it is another run, or is damaged."""


def weight_fingerprint(model: torch.nn.Module) -> str:
    """
    sha256 of the weights of `p_theta` (`model` without its LoRA adapters): every tensor's name, shape and dtype, and
    the bytes of `FINGERPRINT_ELEMENTS` elements evenly spaced through it (all of a smaller tensor).

    Cheap at any size, and exact. Hashing every byte would read a 7B model's 15 GB (on a GPU: copy them to the CPU) at
    every `train()`; sums of the weights depend in their last bits on the number of threads and the device, so the
    same model could seem changed. A sample of the exact bytes costs at most 256 KiB per tensor, and any real change
    of `p_theta` (another checkpoint, a fine-tune, a merged LoRA, another dtype or quantization) moves a dense set of
    values of the tensors it touches, so the sample sees it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue  # the regions' adapters, not p_theta
        digest.update(f"{name.replace('.base_layer', '')} {tuple(tensor.shape)} {tensor.dtype};".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)
        flat = flat[:: max(1, flat.numel() // FINGERPRINT_ELEMENTS)][:FINGERPRINT_ELEMENTS]
        digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, default=str).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """JSON for the settings' sets and enums."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    return value.value if isinstance(value, Enum) else str(value)


def run_manifest(model: torch.nn.Module, tokenizer, reward_names: list[str], args, peft_config) -> dict:
    """
    What makes a run the run it is: the proposal `p_theta` (id and weights, see [`weight_fingerprint`]), the tokenizer
    (vocabulary and chat template), the reward functions' names, the budget, the LoRA of the negative models and the
    settings of `args` that change what is sampled, paid for or fit (`BanelConfig._RECORDED_FIELDS`). JSON, written to
    `banel_run.json` by the run's first `train()`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    manifest = {
        "model": getattr(base.config, "_name_or_path", None),
        "model_weights_sha256": weight_fingerprint(model),
        "tokenizer_vocab_sha256": _sha256(sorted(tokenizer.get_vocab().items())),
        "chat_template_sha256": _sha256(getattr(tokenizer, "chat_template", None)),
        "reward_funcs": list(reward_names),
        "max_reward_evaluations": args.max_reward_evaluations,
        **{name: getattr(args, name) for name in args._RECORDED_FIELDS},
        "peft_config": {name: getattr(peft_config, name, None) for name in LORA_SETTINGS},
    }
    return json.loads(json.dumps(manifest, default=_plain, sort_keys=True))


def manifest_differences(recorded: dict, current: dict) -> list[str]:
    """Every field of `current` that contradicts the `recorded` manifest, as `name: recorded value -> value now`."""
    differences = []
    for name in sorted(recorded.keys() | current.keys()):
        old, new = recorded.get(name), current.get(name)
        budget_raised = name == "max_reward_evaluations" and isinstance(old, int) and new >= old
        if old != new and not budget_raised:
            note = " (it may only go up)" if name == "max_reward_evaluations" else ""
            differences.append(f"{name}: {old!r} in the run, {new!r} now{note}")
    return differences


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as file:
            return json.loads(file.read())
    except ValueError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}): {REPAIR}.") from None


def _write_json(path: str, value: Any) -> None:
    """Write `value` to `path` atomically: a crash leaves the old file or the new one, whole."""
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(value, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


@dataclass
class RunFolder:
    """What a run's `output_dir` holds: its ledger (open and locked), its saved regions and its logged metrics."""

    ledger: RewardLedger
    regions: list[RejectionRegion] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)  # the regions' adapters' weights, when asked for
    proposal: tuple[str, dict] | None = None  # the distilled proposal's name and weights, when asked for
    log_history: list[dict] = field(default_factory=list)  # `trainer_state.json`'s, for the rounds before the next


def open_run_folder(output_dir: str, manifest: dict, force: bool = False, load_weights: bool = True) -> RunFolder:
    """
    Open the run in `output_dir` for a `train()` whose [`run_manifest`] is `manifest`: lock its ledger, check the
    folder against the run, read its regions (and with `load_weights`, their adapters) and its logged metrics, and
    record the manifest on the first `train()`. A folder that contradicts the run is refused with a
    [`RunFolderError`] naming every difference, before anything in it is written; its ledger is closed again (its
    lock released) whenever this raises. `force` lets a run resume with changed settings and records them.
    """
    manifest_path = os.path.join(output_dir, MANIFEST_NAME)
    recorded = _read_json(manifest_path) if os.path.exists(manifest_path) else None
    if recorded is not None and not isinstance(recorded, dict):
        raise RunFolderError(f"{manifest_path} is not a run's manifest: {REPAIR}.")
    if recorded is not None and not os.path.exists(os.path.join(output_dir, LEDGER_NAME)):
        raise RunFolderError(
            f"{output_dir} holds the manifest of a run ({MANIFEST_NAME}) but not its {LEDGER_NAME}, the record of "
            f"what it paid for: {REPAIR} (resuming would pay for its evaluations again)."
        )
    ledger = RewardLedger(output_dir)
    try:
        saved = os.path.exists(os.path.join(output_dir, POSTERIOR_CONFIG_NAME))
        regions = read_regions(output_dir) if saved else []
        _check(output_dir, recorded, manifest, ledger, regions, force)
        folder = RunFolder(ledger, regions)
        if regions and load_weights:
            folder.weights, folder.proposal = read_region_weights(output_dir)[1], read_proposal_weights(output_dir)
        if recorded is None or (force and recorded != manifest):
            _write_json(manifest_path, manifest)
        # The rounds the resumed run will not log again: up to the last that added or changed a region (see
        # `BanelTrainer._rounds_to_run`).
        first_round = max((region.last_round for region in regions), default=-1) + 1
        folder.log_history = [e for e in _log_history(output_dir) if e.get("round", first_round) < first_round]
        return folder
    except BaseException:
        ledger.close()
        raise


def open_run(accelerator, output_dir: str, manifest: dict, force: bool = False, load: bool = True) -> RunFolder:
    """
    [`open_run_folder`] on every process: the main process alone reads (and locks) the files, and sends the others
    the ledger's lines (their ledger is a replica), the regions, their weights (with `load`) and the logged metrics;
    its ledger writes the run's successes to `successes.jsonl` ([`HitsFile`]).
    """

    def read():
        nonlocal folder
        folder = open_run_folder(output_dir, manifest, force, load_weights=load)
        return folder.ledger.lines, folder.regions, folder.weights, folder.log_history, folder.proposal

    folder = None
    lines, regions, weights, log_history, proposal = on_main_process(accelerator, read)
    if folder is None:
        return RunFolder(RewardLedger.replica(lines), regions, weights, proposal, log_history)
    # The main process writes the hits as they are paid for, to a file made complete again from the ledgers.
    folder.ledger.hits = HitsFile(output_dir)
    eval_ledger = RewardLedger.read(output_dir, EVAL_LEDGER_NAME, missing_ok=True)
    folder.ledger.hits.rewrite({LEDGER_NAME: folder.ledger, EVAL_LEDGER_NAME: eval_ledger})
    return folder


def _check(
    output_dir: str,
    recorded: dict | None,
    manifest: dict,
    ledger: RewardLedger,
    regions: list[RejectionRegion],
    force: bool,
) -> None:
    """Refuse, naming every problem at once, a resume that contradicts the run's manifest, ledger or regions."""
    differences = manifest_differences(recorded, manifest) if recorded is not None else []
    forced = [d for d in differences if d.split(":")[0] not in UNFORCEABLE] if force else []
    problems = [d for d in differences if d not in forced]
    if manifest["max_reward_evaluations"] < len(ledger):
        problems.append(
            f"max_reward_evaluations: {manifest['max_reward_evaluations']} now, below the {len(ledger)} evaluations "
            f"the ledger already holds (raise it to at least {len(ledger)})"
        )
    fingerprint = read_posterior_config(output_dir).get("ledger") if regions else None
    if fingerprint is not None and not (
        isinstance(fingerprint, dict) and isinstance(fingerprint.get("lines"), int) and ledger.starts_with(fingerprint)
    ):
        problems.append(
            f"{LEDGER_NAME}: {POSTERIOR_CONFIG_NAME} lists {len(regions)} regions fit on the ledger's first "
            f"{fingerprint.get('lines') if isinstance(fingerprint, dict) else '?'} lines, but the ledger has "
            f"{len(ledger.lines)} lines and does not start with them: it was cut back, deleted, edited or replaced, "
            "and a resume would trust regions fit on evaluations it no longer holds and pay for them again. Restore "
            "the ledger from a backup, or start a new run in another output_dir"
        )
    if forced:
        logger.warning(f"Resuming the run in {output_dir} with changed settings (forced): " + "; ".join(forced))
    if problems:
        listed = "".join(f"\n  - {problem}" for problem in problems)
        advice = ""
        if differences:
            advice = f"\nGive the settings recorded in {MANIFEST_NAME}, or start a new run in another output_dir"
            if not force and any(d.split(":")[0] not in UNFORCEABLE for d in differences):
                advice += f"; to resume with the new settings anyway, call `train(resume_from_checkpoint={FORCE!r})`"
        raise RunFolderError(f"The run in {output_dir} cannot be resumed:{listed}{advice}.")


def _log_history(output_dir: str) -> list[dict]:
    """The metrics logged in `trainer_state.json` (none when it is missing or unreadable: they are only figures)."""
    path = os.path.join(output_dir, TRAINER_STATE_NAME)
    if not os.path.exists(path):
        return []
    try:
        return _read_json(path)["log_history"]
    except (RunFolderError, KeyError, TypeError) as error:
        logger.warning(f"Not reloading the metrics of earlier rounds: {path} cannot be read ({error}).")
        return []
