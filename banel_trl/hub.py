"""Model cards in TRL's style and Hub publishing of BaNEL posteriors."""

import importlib.resources
import os
import shutil
import tempfile
import textwrap
from importlib.metadata import version

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .ledger import EVAL_LEDGER_NAME, HITS_NAME, LEDGER_NAME
from .regions import RejectionRegion, config_regions, read_posterior_config
from .report import REPORT_NAME, REPORT_PLOT_NAME, RunSummary, clopper_pearson, plot_run, read_run


MODEL_CARD_TEMPLATE = "banel_model_card.md"
# Every paid completion and every success of a run: uploaded only when the user asks (`include_run_records=True`).
RUN_RECORDS = (LEDGER_NAME, EVAL_LEDGER_NAME, HITS_NAME, REPORT_NAME)
TAGS = ["trl", "banel"]
PAPER = {
    "title": "BaNEL: Exploration Posteriors for Generative Modeling Using Only Negative Rewards",
    "id": "2510.09596",
    "citation": textwrap.dedent("""\
        @article{banel2025,
            title        = {{BaNEL: Exploration Posteriors for Generative Modeling Using Only Negative Rewards}},
            year         = 2025,
            eprint       = {arXiv:2510.09596},
        }"""),
}


def _rate(successes: int, samples: int) -> str:
    low, high = clopper_pearson(successes, samples)
    return f"{successes / samples:.2e} [{low:.1e}, {high:.1e}] ({successes}/{samples})"


def _run_figures(
    run: RunSummary, max_reward_evaluations: int | None, max_successes: int, run_records_uploaded: bool
) -> tuple[list[tuple], list[list], list[str]]:
    """
    A run's lines of the card's summary table, rows of its rounds table, and its listed successes (none when the
    run's records are not uploaded with the card).
    """
    used = len(run.records)
    summary = [
        (
            "Training reward evaluations (NREs)",
            f"{used} of {max_reward_evaluations}" if max_reward_evaluations else used,
        ),
        ("Evaluation reward evaluations (NREs)", run.eval_evaluations),
        ("Successes found (never trained on)", len(run.successes)),
    ]
    sampled = [r for r in run.rounds if r.evaluations + r.repeats]
    if sampled:
        first, last = sampled[0], sampled[-1]
        summary.append(
            (
                f"Success rate, round {first.round} (base model)",
                _rate(first.successes, first.evaluations + first.repeats),
            )
        )
        if last is not first:
            summary.append(
                (
                    f"Success rate, round {last.round} (posterior)",
                    _rate(last.successes, last.evaluations + last.repeats),
                )
            )
    if "eval_success_rate" in run.eval_metrics:
        samples = int(run.eval_metrics["eval_num_samples"])
        summary.append(
            (
                "Success rate of the final posterior (evaluation)",
                _rate(round(run.eval_metrics["eval_success_rate"] * samples), samples),
            )
        )
    rounds = [
        [
            r.round,
            r.evaluations,
            r.successes,
            _rate(r.successes, r.evaluations + r.repeats),
            "–" if r.acceptance_rate is None else f"{r.acceptance_rate:.2e}",
            "–" if r.threshold is None else f"{r.threshold:.3f}",
        ]
        for r in sampled
    ]
    uploaded = "uploaded with the model" if run_records_uploaded else "not uploaded (kept in the run's folder)"
    summary.append((f"Run records ({', '.join(RUN_RECORDS)})", uploaded))
    if not run_records_uploaded:
        return summary, rounds, []
    successes = [f"round {r['round']}: `{r['completion']!r}`" for r in run.successes[:max_successes]]
    if len(run.successes) > max_successes:
        successes.append(f"... and {len(run.successes) - max_successes} more.")
    return summary, rounds, successes


def _regions_row(regions: list[RejectionRegion]) -> tuple[int, tuple[str, int | str]]:
    """
    How many of the saved posterior's `regions` reject, and the card's summary row on them, which names the relaxed
    ones, counts the retracted ones apart (see [`RegionPolicy`]) and says whether their negative
    models are separate models (see `BanelConfig.negative_model`).
    """
    retracted = sum(region.retracted for region in regions)
    relaxed = sum(region.relaxed for region in regions)
    rejecting = len(regions) - retracted
    notes = ["separate negative models"] if any(region.separate for region in regions) else []
    notes += ([f"{relaxed} relaxed"] if relaxed else []) + ([f"{retracted} more retracted"] if retracted else [])
    return rejecting, ("Rejection regions", f"{rejecting} ({', '.join(notes)})" if notes else rejecting)


def generate_banel_model_card(
    output_dir: str,
    model_name: str,
    hub_model_id: str,
    base_model: str | None = None,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
    max_reward_evaluations: int | None = None,
    plot_file: str | None = None,
    wandb_url: str | None = None,
    trackio_url: str | None = None,
    max_successes: int = 10,
    run_records_uploaded: bool = True,
    trainer_name: str = "BaNEL",
    paper: dict[str, str] | None = None,
) -> ModelCard:
    """
    A [`~huggingface_hub.ModelCard`] for a BaNEL posterior, in the style of TRL's `generate_model_card`: the method and
    its paper, the reward evaluations (NREs) spent, the successes found, and the success rate of every round with its
    Clopper-Pearson interval, read from the run's folder.

    Args:
        output_dir (`str`):
            A folder holding `banel_posterior.json` (a saved posterior) and, for the run's figures, the run's ledger
            (`banel_ledger.jsonl`) and `trainer_state.json`.
        model_name (`str`):
            Name of the model.
        hub_model_id (`str`):
            Hub model id, `username/model_id`.
        base_model (`str`, *optional*):
            The proposal `p_theta`; defaults to the base model recorded in `banel_posterior.json`.
        dataset_name (`str`, *optional*):
            Hub id of the prompts' dataset.
        tags (`list[str]`, *optional*):
            More tags; `trl` and `banel` are always added.
        max_reward_evaluations (`int`, *optional*):
            The run's budget, shown next to the NREs used.
        plot_file (`str`, *optional*):
            Path, relative to the card, of the per-round plot to embed.
        wandb_url, trackio_url (`str`, *optional*):
            Tracking links, as in TRL's cards.
        max_successes (`int`, *optional*, defaults to `10`):
            Successes listed.
        run_records_uploaded (`bool`, *optional*, defaults to `True`):
            Whether the run's records (its ledgers and `successes.jsonl`) go with the card: without them, the card
            lists no success and says they were not uploaded.
        trainer_name (`str`, *optional*, defaults to `"BaNEL"`):
            The method's name, as the trainer hands it down (`BanelTrainer._name`).
        paper (`dict[str, str]`, *optional*):
            The method's paper, `title`, `id` and `citation`, as the trainer hands it down (`BanelTrainer._paper`);
            defaults to BaNEL's.

    Returns:
        [`~huggingface_hub.ModelCard`]
    """
    config = read_posterior_config(output_dir)
    base_model = base_model or config["base_model_name_or_path"]
    base_model_on_hub = bool(base_model) and not os.path.isdir(base_model)
    paper = paper or PAPER
    regions, regions_row = _regions_row(config_regions(config, output_dir))
    summary = [("Base model `p_theta`", f"`{base_model}`"), regions_row]
    rounds, successes = [], []
    if os.path.isfile(os.path.join(output_dir, LEDGER_NAME)):
        figures = _run_figures(read_run(output_dir), max_reward_evaluations, max_successes, run_records_uploaded)
        summary, rounds, successes = summary + figures[0], figures[1], figures[2]
    card_data = ModelCardData(
        base_model=base_model if base_model_on_hub else None,
        datasets=dataset_name,
        library_name="peft",
        model_name=model_name,
        tags=["generated_from_trainer", *dict.fromkeys([*TAGS, *(tags or [])])],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(importlib.resources.files("banel_trl.templates").joinpath(MODEL_CARD_TEMPLATE)),
        model_name=model_name,
        hub_model_id=hub_model_id,
        base_model=base_model,
        base_model_on_hub=base_model_on_hub,
        dataset_name=dataset_name,
        num_regions=regions,
        summary=summary,
        rounds=rounds,
        successes=successes,
        plot_file=plot_file,
        wandb_url=wandb_url,
        trackio_url=trackio_url,
        trainer_name=trainer_name,
        trainer_citation=paper["citation"],
        paper_title=paper["title"],
        paper_id=paper["id"],
        banel_trl_version=version("banel_trl"),
        trl_version=version("trl"),
        transformers_version=version("transformers"),
        peft_version=version("peft"),
        pytorch_version=version("torch"),
        datasets_version=version("datasets"),
        tokenizers_version=version("tokenizers"),
    )


def write_model_card(output_dir: str, model_name: str | None, hub_model_id: str | None, **kwargs) -> str:
    """
    Write `README.md` (see [`generate_banel_model_card`]) into `output_dir`, with the per-round plot
    (`banel_report.png`) when the folder holds the run's ledger. `hub_model_id` defaults to the folder's name and
    `model_name` to the last part of `hub_model_id`. Returns the card's path.
    """
    hub_model_id = hub_model_id or os.path.basename(os.path.abspath(output_dir))
    model_name = model_name or hub_model_id.split("/")[-1]
    plot_file = None
    if os.path.isfile(os.path.join(output_dir, LEDGER_NAME)):
        plot_run(read_run(output_dir), os.path.join(output_dir, REPORT_PLOT_NAME))
        plot_file = REPORT_PLOT_NAME
    card = generate_banel_model_card(output_dir, model_name, hub_model_id, plot_file=plot_file, **kwargs)
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path


def push_posterior_to_hub(
    posterior,
    repo_id: str,
    tokenizer=None,
    run_dir: str | None = None,
    commit_message: str = "Upload BaNEL posterior",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    dataset_name: str | None = None,
    include_run_records: bool = False,
):
    """
    Upload a posterior to the Hub: every region's adapter, `banel_posterior.json` (the thresholds), the tokenizer if
    given, and a model card. With `run_dir` (the run's `output_dir`), the card reports the NREs and success rates of
    the run, with its plot; its ledgers and hits go too only with `include_run_records`. Load it back with
    [`~BanelPosterior.from_pretrained`] on a download of the repository.

    Args:
        posterior ([`BanelPosterior`]):
            The posterior to publish: every region's adapter and `banel_posterior.json` (the thresholds).
        repo_id (`str`):
            The Hub repository, created if needed.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Uploaded beside the adapters.
        run_dir (`str`, *optional*):
            The run's `output_dir`, for the card's figures and the ledger.
        commit_message, private, token, revision:
            As in [`~huggingface_hub.HfApi.upload_folder`] and [`~huggingface_hub.HfApi.create_repo`].
        dataset_name (`str`, *optional*):
            Hub id of the prompts' dataset, for the card.
        include_run_records (`bool`, *optional*, defaults to `False`):
            Upload the run's ledgers and `successes.jsonl` (every paid completion and every success) too.

    Returns:
        [`~huggingface_hub.CommitInfo`]: the upload's commit.
    """
    if not posterior.regions:
        raise ValueError("The posterior has no region: there is nothing to publish.")
    if run_dir is not None and not os.path.isfile(os.path.join(run_dir, LEDGER_NAME)):
        raise FileNotFoundError(f"`run_dir` {run_dir} has no {LEDGER_NAME}: it is not a BaNEL run's output_dir.")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        posterior.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        plot_file = None
        if run_dir is not None:
            for name in (LEDGER_NAME, EVAL_LEDGER_NAME, HITS_NAME, "trainer_state.json"):
                if os.path.isfile(os.path.join(run_dir, name)):
                    shutil.copyfile(os.path.join(run_dir, name), os.path.join(folder, name))
            plot_run(read_run(folder), os.path.join(folder, REPORT_PLOT_NAME))
            plot_file = REPORT_PLOT_NAME
        card = generate_banel_model_card(
            folder,
            model_name=repo_id.split("/")[-1],
            hub_model_id=repo_id,
            dataset_name=dataset_name,
            plot_file=plot_file,
            run_records_uploaded=include_run_records,
        )
        card.save(os.path.join(folder, "README.md"))
        ignore = [] if include_run_records else list(RUN_RECORDS)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            ignore_patterns=ignore,
        )


def push_trainer_to_hub(
    trainer,
    commit_message: str,
    blocking: bool,
    token: str | None,
    revision: str | None,
    include_run_records: bool,
    **kwargs,
):
    """
    [`~transformers.Trainer.push_to_hub`] for a [`BanelTrainer`]: the saved posterior (and distilled adapter), the
    tokenizer, the run's figures and plot, and a card saying what was uploaded; the run's records (`RUN_RECORDS`:
    every paid completion and every success) only with `include_run_records`.
    """
    if trainer.hub_model_id is None:
        trainer.init_hf_repo(token=token)
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    trainer.create_model_card(run_records_uploaded=include_run_records, **kwargs)
    ignore = ["_*", "checkpoint-*", ".banel_saving", "*.tmp", *([] if include_run_records else RUN_RECORDS)]
    return HfApi(token=token).upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=trainer.args.output_dir,
        commit_message=commit_message,
        run_as_future=not blocking,
        ignore_patterns=ignore,
        revision=revision or trainer.args.hub_revision,
    )
