"""Early stopping on validation loss (the seed's EarlyStoppingMonitor), with state that survives a resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Tracks the best val_loss; stops after `patience` validations without a `min_delta` improvement."""

    patience: int | None  # None: never stop early, only track the best
    min_delta: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False

    def update(self, val_loss: float, step: int, epoch: int) -> bool:
        """Record a validation; return True when it is a new best."""
        improved = self.best_val_loss is None or val_loss < self.best_val_loss - self.min_delta
        if improved:
            self.best_val_loss, self.best_step, self.best_epoch, self.wait = val_loss, step, epoch, 0
        else:
            self.wait += 1
            if self.patience is not None and self.wait >= self.patience:
                self.stopped = True
        return improved

    def could_stop_next(self) -> bool:
        """Whether the next validation may stop the run (one more without improvement reaches the patience)."""
        return self.patience is not None and self.wait + 1 >= self.patience

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EarlyStopping:
        return cls(**data)
