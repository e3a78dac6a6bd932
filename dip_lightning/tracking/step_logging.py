"""Per-step logging without paying for the steps whose values no logger receives.

Lightning sends values logged ``on_step`` to the loggers every ``log_every_n_steps`` steps and drops
the rest, yet every ``self.log`` call costs it about a millisecond of Python (it re-validates and
moves its result record). A DIP step logs half a dozen scalars, so on small images that was most of
the platform's overhead over a plain loop. Methods log through :func:`logs_this_step` instead.
"""

from __future__ import annotations

import pytorch_lightning as pl


def logs_this_step(trainer: pl.Trainer | None) -> bool:
    """Whether values logged in the current training step reach the loggers.

    True on Lightning's logging steps (every ``log_every_n_steps``, and when training is told to
    stop) and on the last step, so that ``trainer.callback_metrics`` holds the final values. True
    outside a trainer, where ``self.log`` decides for itself.
    """
    if trainer is None:
        return True
    step = trainer.global_step + 1  # during training_step: the number of this step
    every = trainer.log_every_n_steps
    last = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
    return (every > 0 and step % every == 0) or trainer.should_stop or last
