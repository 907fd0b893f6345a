"""What reward functions log through GRPO's `log_extra` and `log_metric`, per batch of samples."""

import logging
import math


logger = logging.getLogger(__name__)


class RewardLogs:
    """
    What reward functions logged through GRPO's `log_extra(column, values)` and `log_metric(name, value)` keyword
    arguments, over the batches added since it was created.

    Attributes:
        extra (`dict[str, list]`):
            One list per column, aligned with the samples of the batches in the order they were added: `None` where a
            batch did not log the column.
        metric_values (`dict[str, list[float]]`):
            Every value logged per metric; [`~RewardLogs.metrics`] averages them.
        num_samples (`int`):
            Samples of the batches added.
    """

    def __init__(self):
        self.extra: dict[str, list] = {}
        self.metric_values: dict[str, list[float]] = {}
        self.num_samples = 0

    @property
    def metrics(self) -> dict[str, float | None]:
        """Each metric averaged over the values logged, NaN left out (None when none is left), as GRPO's `log`."""
        averages = {}
        for name, values in self.metric_values.items():
            valid = [value for value in values if not math.isnan(value)]
            averages[name] = sum(valid) / len(valid) if valid else None
        return averages

    def add_batch(self, extra: dict[str, list], metric_values: dict[str, list[float]], num_samples: int) -> None:
        """Add what was logged for a batch of `num_samples` samples: `extra` columns of one value per sample."""
        for column in list(dict.fromkeys([*self.extra, *extra])):
            values = list(extra.get(column, [None] * num_samples))
            if len(values) != num_samples:
                logger.warning(
                    f"`log_extra({column!r}, ...)` logged {len(values)} values for a batch of {num_samples} "
                    "completions; expected one per completion. The column is cut or padded with None to fit."
                )
                values = (values + [None] * num_samples)[:num_samples]
            self.extra.setdefault(column, [None] * self.num_samples).extend(values)
        for name, values in metric_values.items():
            self.metric_values.setdefault(name, []).extend(values)
        self.num_samples += num_samples
