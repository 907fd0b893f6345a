"""Rejection regions and their saved form: the region, and saving and reading a posterior's regions and adapters."""

import json
import os
import shutil
from dataclasses import asdict, dataclass

import torch
from peft import PeftModel, load_peft_weights
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel


POSTERIOR_CONFIG_NAME = "banel_posterior.json"
BASE_ADAPTER = "__base__"  # the name of p_theta, no adapter (PEFT's own name for it)
NOT_SETTINGS = ("regions", "generation_config", "base_model_name_or_path", "ledger")  # the rest of the saved JSON


@dataclass
class RejectionRegion:
    """
    `R_k = {x : log p_phi_k(x) - log p_ref_k(x) > threshold}`. `p_phi_k` is the LoRA adapter `adapter_name`, the
    negative model. `p_ref_k` is `p_theta` (`reference_adapter=BASE_ADAPTER`) or the LoRA adapter `reference_adapter`,
    a model of the posterior the negatives were drawn from (see [`RegionPolicy`]). With `separate`, both
    name separate models instead (see `BanelConfig.negative_model`), saved whole in the posterior's folder. `proposal`
    is the model whose samples the region was fit on: `p_theta`, or a distilled proposal (see
    `BanelConfig.distill_posterior`).
    `kappa`, when set, weighs `log p_phi_k` in this region's score (a relaxed region's; 1 otherwise). The paid samples
    of the next rounds review a region (see [`RegionPolicy`]): `reviewed_round` is the round whose samples last
    changed it, by relaxing it (a shallower cut) or by retracting it (a `retracted` region rejects nothing).
    """

    adapter_name: str
    threshold: float
    round: int
    reference_adapter: str = BASE_ADAPTER
    proposal: str = BASE_ADAPTER
    retracted: bool = False
    kappa: float | None = None
    reviewed_round: int | None = None
    separate: bool = False

    @property
    def last_round(self) -> int:
        """The last round that added or changed the region."""
        return self.round if self.reviewed_round is None else self.reviewed_round

    @property
    def relaxed(self) -> bool:
        """Whether a later round relaxed the region (and none retracted it)."""
        return self.reviewed_round is not None and not self.retracted

    @property
    def adapter_names(self) -> list[str]:
        """The LoRA adapters the region is made of (with the distilled proposal it acts on)."""
        names = ([] if self.separate else [self.adapter_name, self.reference_adapter]) + [self.proposal]
        return list(dict.fromkeys(name for name in names if name != BASE_ADAPTER))

    @property
    def model_names(self) -> list[str]:
        """The separate models the region is made of (see `BanelConfig.negative_model`)."""
        names = [self.adapter_name, self.reference_adapter] if self.separate else []
        return [name for name in names if name != BASE_ADAPTER]


def read_posterior_config(path: str) -> dict:
    """The settings and regions of the posterior saved in `path` (`banel_posterior.json`), checked to be one."""
    file_path = os.path.join(path, POSTERIOR_CONFIG_NAME)
    with open(file_path, "rb") as file:
        data = file.read()
    try:
        config = json.loads(data)
        if not isinstance(config, dict) or not isinstance(config.get("regions"), list):
            raise ValueError("it does not list regions")
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError too
        raise ValueError(
            f"{file_path} is not a saved BaNEL posterior ({error}). Restore it from a backup. In a run's output_dir, "
            "deleting it makes `train()` fit the regions again from the ledger (no reward evaluation is paid again); "
            "or start a new run in another output_dir."
        ) from None
    return config


def read_regions(path: str) -> list[RejectionRegion]:
    """The regions listed in a saved posterior folder (whose adapters are complete: the list is written last)."""
    return config_regions(read_posterior_config(path), path)


def config_regions(config: dict, path: str) -> list[RejectionRegion]:
    """The regions listed in `config`, the saved posterior read from `path` (see [`read_posterior_config`])."""
    regions = []
    for number, region in enumerate(config["regions"]):
        try:
            regions.append(RejectionRegion(**region))
        except TypeError as error:
            raise ValueError(
                f"Region {number} of {os.path.join(path, POSTERIOR_CONFIG_NAME)} is not a region ({error}): "
                "restore the file from a backup, or delete it to fit the regions again from the ledger."
            ) from None
    return regions


def saved_adapter_names(regions: list[RejectionRegion], proposal: str = BASE_ADAPTER) -> list[str]:
    """Every LoRA adapter a posterior is made of, once each: its regions' and its proposal's (`p_theta` has none)."""
    names = [name for region in regions for name in region.adapter_names] + [proposal]
    return list(dict.fromkeys(name for name in names if name != BASE_ADAPTER))


def _read_adapter_weights(path: str, name: str, what: str) -> dict[str, torch.Tensor]:
    """The weights (on the CPU) of the adapter `name` saved in `path`; a missing or unreadable one is named."""
    folder = os.path.join(path, name)
    try:
        if not os.path.isdir(folder):
            raise FileNotFoundError("the folder is missing")
        return load_peft_weights(folder, device="cpu")
    except Exception as error:
        raise ValueError(
            f"{folder}, {what} listed in {os.path.join(path, POSTERIOR_CONFIG_NAME)}, cannot be read "
            f"({type(error).__name__}: {error}). Restore it from a backup. In a run's output_dir, deleting "
            f"{POSTERIOR_CONFIG_NAME} makes `train()` fit the regions again from the ledger (no reward evaluation is "
            "paid again); or start a new run in another output_dir."
        ) from None


def load_negative_model(path: str, name: str) -> PreTrainedModel:
    """The separate model `name` saved in the posterior folder `path`; a missing or unreadable one is named."""
    folder = os.path.join(path, name)
    try:
        if not os.path.isdir(folder):
            raise FileNotFoundError("the folder is missing")
        return AutoModelForCausalLM.from_pretrained(folder)
    except Exception as error:
        raise ValueError(
            f"{folder}, a separate negative model listed in {os.path.join(path, POSTERIOR_CONFIG_NAME)}, cannot be "
            f"loaded ({type(error).__name__}: {error}). Restore it from a backup. In a run's output_dir, deleting "
            f"{POSTERIOR_CONFIG_NAME} makes `train()` fit the regions again from the ledger (no reward evaluation is "
            "paid again); or start a new run in another output_dir."
        ) from None


def read_region_weights(path: str) -> tuple[list[RejectionRegion], list[dict[str, dict | PreTrainedModel]]]:
    """
    The regions of a saved posterior folder, and for each, by name, the weights of its adapters and its separate
    models, on the CPU. A missing or unreadable one is refused with its folder named.
    """
    regions = read_regions(path)
    weights = []
    for region in regions:
        what = f"the adapter of region {region.round}"
        region_weights = {name: _read_adapter_weights(path, name, what) for name in region.adapter_names}
        region_weights |= {name: load_negative_model(path, name) for name in region.model_names}
        weights.append(region_weights)
    return regions, weights


def read_proposal_weights(path: str) -> tuple[str, dict[str, torch.Tensor]] | None:
    """
    The distilled proposal a saved posterior samples from (`proposal_adapter`) and its adapter's weights on the CPU, or
    None when it samples `p_theta`.
    """
    name = read_posterior_config(path).get("proposal_adapter", BASE_ADAPTER)
    if name == BASE_ADAPTER:
        return None
    return name, _read_adapter_weights(path, name, "the proposal adapter")


def save_posterior(posterior, save_directory: str, settings: dict, ledger: dict | None = None) -> None:
    """
    Save `posterior` ([`BanelPosterior`]): every region's adapter or separate model (one sub-folder each), then
    `banel_posterior.json` (its regions, `settings`, generation config, base model and the `ledger` fingerprint the
    regions were fit on). The JSON is written last and atomically, so a folder only ever lists regions whose adapters
    are complete.
    """
    os.makedirs(save_directory, exist_ok=True)
    adapters = posterior.adapter_names
    models = [name for region in posterior.regions for name in region.model_names]
    if adapters or models:
        # Every save rewrites every region's adapter. Write them aside and move them into place file by file, so that
        # a crash mid-save leaves each file of a listed region whole (the old or the new copy, the same).
        staging = os.path.join(save_directory, ".banel_saving")
        shutil.rmtree(staging, ignore_errors=True)
        if adapters:
            posterior.model.save_pretrained(staging, selected_adapters=adapters)
        for name in models:
            posterior.negative_models[name].save_pretrained(os.path.join(staging, name))
        for folder, _, files in os.walk(staging):
            target = os.path.join(save_directory, os.path.relpath(folder, staging))
            os.makedirs(target, exist_ok=True)
            for name in files:
                with open(os.path.join(folder, name), "rb") as file:
                    os.fsync(file.fileno())
                os.replace(os.path.join(folder, name), os.path.join(target, name))
        shutil.rmtree(staging)
    model = posterior.model
    config = {
        "regions": [asdict(region) for region in posterior.regions],
        **settings,
        "generation_config": posterior.generation_config.to_diff_dict(),
        "base_model_name_or_path": (
            model.get_base_model() if isinstance(model, PeftModel) else model
        ).config._name_or_path,
        **({} if ledger is None else {"ledger": ledger}),
    }
    temporary = os.path.join(save_directory, POSTERIOR_CONFIG_NAME + ".tmp")
    with open(temporary, "w") as file:
        json.dump(config, file, indent=2)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, os.path.join(save_directory, POSTERIOR_CONFIG_NAME))


def load_posterior(path: str, model: PreTrainedModel | PeftModel | str | None = None) -> tuple:
    """
    What [`save_posterior`] wrote in `path`, on `model` (`p_theta`: a model, id or path; defaults to the recorded base
    model): `(model with the regions' adapters, regions, separate models by name, settings)`.
    """
    config = read_posterior_config(path)
    if model is None or isinstance(model, str):
        model = AutoModelForCausalLM.from_pretrained(model or config["base_model_name_or_path"])
    regions = config_regions(config, path)
    for name in saved_adapter_names(regions, config.get("proposal_adapter", BASE_ADAPTER)):
        adapter_path = os.path.join(path, name)
        try:
            if not os.path.isdir(adapter_path):
                raise FileNotFoundError("the folder is missing")
            if isinstance(model, PeftModel):
                model.load_adapter(adapter_path, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, adapter_path, adapter_name=name)
        except Exception as error:
            raise ValueError(
                f"{adapter_path}, an adapter listed in {os.path.join(path, POSTERIOR_CONFIG_NAME)}, cannot be loaded "
                f"({type(error).__name__}: {error}). Restore it from a backup, or save the posterior again."
            ) from None
    negative_models = {
        name: load_negative_model(path, name).to(model.device).eval()
        for region in regions
        for name in region.model_names
    }
    if not isinstance(model, PeftModel) and not negative_models:
        raise ValueError(f"{path} holds no region: there is no adapter to load.")
    model.eval()
    settings = {name: value for name, value in config.items() if name not in NOT_SETTINGS}
    settings["generation_config"] = GenerationConfig.from_dict(config["generation_config"])
    return model, regions, negative_models, settings
