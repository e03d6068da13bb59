"""One entry of train.stages, read once per run: which rows it trains on, for how many epochs,
at which lr, and the weight of low-vote rows (those under labels.min_votes_high).

The low-vote weight is decided here and nowhere else: the training dataset (its weights),
FoldRun's step (a scheduled weight, per epoch), TreeRun's fit, `hms bench train` and `hms plan`
all ask a Stage. A stage's `low_vote_weight` is a number, or [start, end] decayed linearly over
the stage's epochs (3rd place: [0.8, 0.2]); a stage without one takes labels.low_vote_weight
(base.yaml: 1.0), which older configs set instead of the stage's key.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from omegaconf import DictConfig

from hms import config as C
from hms.data import labels

ROWS = ("all", "high")  # every training row | those with at least min_votes votes
REQUIRED = ("rows", "epochs", "lr")


@dataclass(frozen=True)
class Stage:
    rows: str  # one of ROWS
    epochs: int  # configured: the lr schedule and a [start, end] weight span these
    run_epochs: int  # trained: a full fit stops where the CV runs found their best
    lr: float
    low_vote_weight: float | tuple[float, float]  # a number, or (start, end) over `epochs`
    min_votes: int  # labels.min_votes_high: rows under it are low-vote

    @classmethod
    def from_entry(cls, entry, min_votes: int, default_weight: float = 1.0, run_epochs: int | None = None,
                   where: str = "train.stages[0]") -> Stage:
        """A Stage from one train.stages entry; `where` names it in errors."""
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise C.ConfigError(f"{where} lacks {', '.join(missing)} (a stage sets rows, epochs and lr)")
        if entry["rows"] not in ROWS:
            raise C.ConfigError(f"{where}.rows must be 'all' or 'high', got {entry['rows']!r}")
        epochs = int(entry["epochs"])
        weight = _weight(entry.get("low_vote_weight", default_weight), f"{where}.low_vote_weight")
        return cls(str(entry["rows"]), epochs, epochs if run_epochs is None else int(run_epochs), float(entry["lr"]),
                   weight, int(min_votes))

    @property
    def scheduled(self) -> bool:
        """Whether the weight changes from epoch to epoch ([start, end])."""
        return isinstance(self.low_vote_weight, tuple)

    def weight_at(self, epoch: int) -> float:
        """The weight of low-vote rows at this epoch of the stage (0-based)."""
        if not self.scheduled:
            return self.low_vote_weight
        start, end = self.low_vote_weight
        return start + (end - start) * epoch / max(1, self.epochs - 1)

    @property
    def weighting(self) -> tuple[int, float]:
        """(min_votes, weight) for make_dataset: the weight at the stage's first epoch (a scheduled
        one is then set per epoch by the training step)."""
        return self.min_votes, self.weight_at(0)

    def rows_of(self, train: pd.DataFrame) -> pd.DataFrame:
        """The rows of `train` this stage trains on."""
        return train if self.rows == "all" else train[labels.high_vote_mask(train, self.min_votes)]


def _weight(value, where: str) -> float | tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise C.ConfigError(f"{where} must be a number or [start, end], got {value!r}") from None
    return start, end


def stages_of(cfg: DictConfig, run_epochs=None) -> list[Stage]:
    """cfg.train.stages as Stages. run_epochs: the epochs a run trains per stage (a full fit's,
    from the CV runs); empty or None: each stage's configured epochs."""
    entries = list(cfg.train.stages)
    trained = list(run_epochs) if run_epochs else [None] * len(entries)
    default = float(cfg.labels.get("low_vote_weight", 1.0))  # older configs' home of the weight
    min_votes = int(cfg.labels.min_votes_high)
    return [Stage.from_entry(entry, min_votes, default, n, f"train.stages[{i}]")
            for i, (entry, n) in enumerate(zip(entries, trained))]


def first_stage(cfg: DictConfig) -> Stage:
    """The stage a run starts with: what a fitted-once model fits on, what `hms bench train` times."""
    return stages_of(cfg)[0]
