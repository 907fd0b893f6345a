"""One run, one Trainer run: callbacks, steps, `max_steps`, checkpoints and logs over BaNEL's many fits (issue 16)."""

import os

from datasets import Dataset, DatasetDict
from transformers import TrainerCallback

from banel_trl import BanelTrainer
from banel_trl.testing import starts_with_b


class EventRecorder(TrainerCallback):
    def __init__(self):
        self.events, self.step_ends = [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("train_begin")

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("train_end")

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("evaluate", sorted(metrics)))


def steps_seen_by(seen: list):
    def reward(completions, trainer_state, **kwargs):
        seen.append(trainer_state.global_step)
        return starts_with_b(completions)

    return reward


def test_a_run_is_one_train_with_one_increasing_step_axis(
    make_proposal, tokenizer, unconditional_dataset, make_config
):
    recorder, seen = EventRecorder(), []
    # Shallow cuts: at the shipped ones the third and fourth rounds spend minutes in rejection sampling.
    args = make_config(
        num_rounds=3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        first_region_rejection_rate=0.5,
        target_rejection_rate=0.5,
    )
    trainer = BanelTrainer(
        make_proposal(), steps_seen_by(seen), args=args, train_dataset=unconditional_dataset,
        processing_class=tokenizer, callbacks=[recorder],
    )  # fmt: skip
    output = trainer.train()

    assert recorder.events == ["train_begin", "train_end"]  # once per run, not once per negative fit
    assert recorder.step_ends == list(range(1, len(recorder.step_ends) + 1))  # the fits' steps continue each other
    assert output.global_step == trainer.state.global_step == len(recorder.step_ends) > 0
    logged_steps = [entry["step"] for entry in trainer.state.log_history]
    assert logged_steps == sorted(logged_steps) and logged_steps[-1] == output.global_step
    assert seen == sorted(seen) and seen[-1] > 0  # the reward functions see the run's step, never going back
    assert "train_loss" in trainer.state.log_history[-1] and "train_runtime" in trainer.state.log_history[-1]
    # The run saves itself after each round; a Trainer checkpoint within a fit would hold nothing a resume uses.
    assert not [name for name in os.listdir(args.output_dir) if name.startswith("checkpoint-")]

    trainer.args.num_rounds, trainer.args.max_reward_evaluations = 4, 200  # a longer run goes on along the same axis
    resumed = BanelTrainer(
        make_proposal(), steps_seen_by(seen), args=trainer.args, train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )  # fmt: skip
    resumed.train()
    logged_steps = [entry["step"] for entry in resumed.state.log_history]
    assert logged_steps == sorted(logged_steps) and len(logged_steps) > len(trainer.state.log_history)
    assert resumed.state.log_history[-2]["round"] == 3  # logged at the step the first run ended on, not from 0


def test_max_steps_caps_the_run_not_each_fit(make_proposal, tokenizer, unconditional_dataset, make_config):
    recorder = EventRecorder()
    args = make_config(max_steps=4, num_rounds=3)  # 40 negatives a round, 64 a batch: 3 epochs take 3 steps a fit
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer,
        callbacks=[recorder],
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == len(recorder.step_ends) == 4
    # Round 0's fit took 3 steps, round 1's negative fit the last one, its reference fit none; no round 2.
    assert len(trainer.posterior.regions) == 2
    assert trainer.num_reward_evaluations == 100


def test_a_run_that_stops_in_round_0_logs_what_it_paid(make_proposal, tokenizer, unconditional_dataset, make_config):
    def everything_succeeds(completions, **kwargs):
        return [1.0] * len(completions)

    trainer = BanelTrainer(
        make_proposal(), everything_succeeds, args=make_config(), train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    assert trainer.num_reward_evaluations == 50 and not trainer.posterior.regions
    rounds = [entry for entry in trainer.state.log_history if "acceptance_rate" in entry]
    assert len(rounds) == 1 and rounds[0]["round"] == 0 and rounds[0]["successes/round"] == 50
    assert trainer.state.log_history[-1]["num_reward_evaluations"] == 50


def test_eval_datasets_by_name_streaming_prompts_and_on_evaluate(make_proposal, tokenizer, make_config):
    recorder = EventRecorder()
    streaming = Dataset.from_dict({"prompt": ["", ""]}).to_iterable_dataset()
    eval_datasets = DatasetDict(first=Dataset.from_dict({"prompt": [""]}), second=Dataset.from_dict({"prompt": [""]}))
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=make_config(num_rounds=1, max_eval_reward_evaluations=64),
        train_dataset=streaming,
        eval_dataset=eval_datasets, processing_class=tokenizer, callbacks=[recorder],
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    # Each dataset's metrics under its name, with the run's `epoch` that `Trainer.log` adds (as `Trainer.evaluate`).
    keys = {key[len("eval_first_") :] for key in metrics if key.startswith("eval_first_")}
    assert {"success_rate", "num_samples"} <= keys
    assert set(metrics) - {"epoch"} == {f"eval_{name}_{key}" for name in ("first", "second") for key in keys}
    assert metrics["eval_first_num_samples"] == 32  # num_generations per prompt
    evaluations = [event for event in recorder.events if event[0] == "evaluate"]
    assert [(event, [key for key in names if key != "epoch"]) for event, names in evaluations] == [
        ("evaluate", sorted(f"eval_{name}_{key}" for key in keys)) for name in ("first", "second")
    ]
