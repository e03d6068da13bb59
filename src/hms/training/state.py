"""Where a run stands: the stage and epoch to resume at, the best validation score so far, the
epochs since it improved (early stopping) and the history log.csv holds. last.pt saves it as a
plain dict (to_dict) beside the weights, optimiser, scheduler and RNG, so it loads with
torch.load(weights_only=True), and a last.pt written before RunState existed (the same keys)
still resumes."""
from __future__ import annotations

from dataclasses import dataclass, field

IMPROVEMENT = 1e-6  # a smaller gain in high-vote KL is noise, not a better checkpoint
BOOKKEEPING = ("stage", "epoch", "best", "bad_epochs", "history")


@dataclass
class RunState:
    stage: int = 0  # the stage to run, or resume inside
    epoch: int = -1  # the last epoch saved in `stage`; -1: the stage has not started
    best: float = float("inf")  # the best high-vote validation KL so far
    bad_epochs: int = 0  # epochs since `best` improved
    history: list[dict] = field(default_factory=list)  # one row per epoch trained (log.csv)
    snapshot: dict = field(default_factory=dict)  # last.pt's model, optimizer, scheduler, rng, ema, fingerprint

    @classmethod
    def from_dict(cls, saved: dict) -> RunState:
        """A state from last.pt's dict; keys it lacks keep a fresh run's values."""
        kept = {k: saved[k] for k in BOOKKEEPING if k in saved}
        return cls(**kept, snapshot={k: v for k, v in saved.items() if k not in BOOKKEEPING})

    def to_dict(self) -> dict:
        """last.pt's dict: plain values and tensors only (weights_only=True loads it)."""
        return {"stage": self.stage, "epoch": self.epoch, "best": self.best, "bad_epochs": self.bad_epochs,
                "history": self.history, **self.snapshot}

    def resumes_in(self, stage: int) -> bool:
        """Whether last.pt stopped inside this stage (an epoch of it saved, the stage not over)."""
        return self.stage == stage and self.epoch >= 0

    def out_of_patience(self, patience: int) -> bool:
        return self.bad_epochs >= patience

    def restart_patience(self) -> None:
        """A new stage starts from the best checkpoint: its epochs get the full patience."""
        self.bad_epochs = 0

    def improves(self, scores: dict) -> bool:
        """Whether an epoch's scores beat the best so far; a full fit has none: its latest epoch is its best."""
        return not scores or scores["val_kl_high"] < self.best - IMPROVEMENT

    def record(self, row: dict, scores: dict) -> bool:
        """Log an epoch (row, then `best`: whether it improved) and update best and patience;
        returns whether it improved."""
        improved = self.improves(scores)
        if improved:
            self.best, self.bad_epochs = scores.get("val_kl_high", float("nan")), 0
        else:
            self.bad_epochs += 1
        self.history.append({**row, "best": improved})
        return improved

    def saved_after(self, stage: int, epoch: int, stage_over: bool, snapshot: dict) -> None:
        """After an epoch: resume after it, or at the next stage's start when this stage is over."""
        self.stage, self.epoch = (stage + 1, -1) if stage_over else (stage, epoch)
        self.snapshot = snapshot
