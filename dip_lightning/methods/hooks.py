"""What a method may override to change the shared loop without touching it.

Mixed into :class:`~dip_lightning.methods.base.DeepImagePrior`: class flags the job reads
(:attr:`trains_network`, :attr:`supports_replicates`), the stopping-rule check made before
anything is built, the loss terms beside the data fidelity, the work done once after training and
the method's own scalars in metrics.json. Each default is plain DIP's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from dip_lightning.errors import ConfigError
from dip_lightning.methods.replicates import check_stopping as check_replicate_stopping


class MethodHooks:
    """The overridable parts of a method (attributes ``replicates`` and ``backtracking_summary``
    come from the method)."""

    trains_network: ClassVar[bool] = True
    """False for a method whose result is computed once in :meth:`after_fit` (a closed-form
    posterior): it takes no training step, so its run reports ``steps`` 0, no output trajectory
    (peak, curves) and no checkpoint, and a stopping rule whose detected step would replace its
    result is refused (:meth:`check_stopping`)."""

    needs_linear_operator: ClassVar[bool] = False
    """True for a method whose computation assumes y = A x + noise with A linear (a Gaussian
    posterior through A): a non-linear operator (phase retrieval) is refused before any work."""

    supports_replicates: ClassVar[bool] = False
    """Whether ``method.replicates=K`` may stack K runs of this method into one network: true only
    when every random number the method draws in training goes through the replicas' own noise
    streams (input perturbation, mean-field weight noise), so that replicate k is the run of seed
    ``seed + k``."""

    def check_operator(self, operator: Any) -> None:
        """Refuse, before anything is built, an operator this method's computation cannot take."""
        if self.needs_linear_operator and not operator.linear:
            raise ConfigError(
                "operator",
                type(operator).__name__,
                f"{type(self).__name__} needs a linear operator (its Gaussian posterior goes through "
                "A); this one is not linear, so use a method that only fits the network",
            )

    def check_stopping(self, criterion: Any) -> None:
        """Refuse, before anything is built, a stopping rule this method cannot follow: one whose
        detected step would replace the result, when there are several trajectories (replicates)
        or none (a method that takes no training step)."""
        if self.replicates > 1:
            check_replicate_stopping(self.replicates, criterion)
        if not self.trains_network and criterion.reports_detection:
            raise ConfigError(
                "stopping",
                criterion.name,
                f"{type(self).__name__} takes no training step, so there is no step for a stopping "
                "rule to pick; use stopping=fixed",
            )

    def after_fit(self) -> None:
        """Work done once, after training and before the results are evaluated.

        For a method whose expensive part needs the fitted weights but not every step (a
        linearisation around them, a closed-form posterior). The job calls it on the rank that
        writes the results, unless training diverged or was interrupted; a signal during it ends
        it at once and the run reports what training gave. Plain DIP does nothing here.
        """

    def extra_loss(self) -> Tensor | None:
        """Loss terms on the weights (the KL of MFVI); none for plain DIP."""
        return None

    def output_loss(self, image: Tensor) -> Tensor | None:
        """The method's own penalty on the output (DRP's TV), beside any ``regulariser``."""
        return None

    def result_metrics(self) -> dict[str, Any]:
        """Scalars of the method itself for metrics.json (backtracking restores; a fitted noise
        level); subclasses add theirs."""
        return self.backtracking_summary()
