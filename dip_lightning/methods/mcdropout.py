"""Monte Carlo dropout DIP (Laves et al.).

Channel dropout after the convolutions, an extra output channel predicting the log-precision s
and the heteroscedastic Gaussian NLL as the loss; at evaluation T dropout masks are drawn in one
batched pass (each batch item gets its own mask).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from dip_lightning.errors import check_choice, check_in_range, check_positive
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.models.layers import init_normal_
from dip_lightning.models.skip import DROPOUT_ORDERS, DROPOUT_PLACEMENTS


@contextmanager
def dropout_active(model: nn.Module) -> Iterator[None]:
    """Keep dropout layers sampling even when the model is in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in layers]
    for m in layers:
        m.train(True)
    try:
        yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


class MCDropoutDIP(DeepImagePrior):
    """DIP with Dropout2d after the convolutions and a predicted log-precision.

    Args:
        dropout_p: channel dropout rate in [0, 1) (0.3 in the original); 0 gives a deterministic
            network, hence zero epistemic variance.
        dropout_placement: where dropout goes (``after_conv``: after every conv block except the
            skip and output convolutions, as in the original; ``decoder_only``: decoder blocks).
        dropout_order: ``before_norm`` (conv -> Dropout2d -> BatchNorm -> activation, the order of
            both reference implementations) or ``after_activation`` (dropout at the end of the
            block, this project's earlier default).
        weight_init_std: conv weights are initialised N(0, std) (0.1 in the original).
    """

    def __init__(
        self,
        *args: Any,
        dropout_p: float = 0.3,
        dropout_placement: str = "after_conv",
        dropout_order: str = "before_norm",
        weight_init_std: float = 0.1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("likelihood", "nll")
        kwargs.setdefault("reconstruction", "predictive_mean")
        kwargs.setdefault("num_samples", 25)
        super().__init__(*args, **kwargs)
        self.dropout_p = float(check_in_range("method.dropout_p", dropout_p, 0.0, 1.0))
        self.dropout_placement = str(
            check_choice("method.dropout_placement", dropout_placement, DROPOUT_PLACEMENTS)
        )
        self.dropout_order = str(check_choice("method.dropout_order", dropout_order, DROPOUT_ORDERS))
        self.weight_init_std = float(
            check_positive("method.weight_init_std", weight_init_std, allow_zero=True)
        )

    def network_kwargs(self) -> dict[str, Any]:
        return {
            **super().network_kwargs(),
            "dropout_p": self.dropout_p,
            "dropout_placement": self.dropout_placement,
            "dropout_order": self.dropout_order,
        }

    def initialise_network(self, net: nn.Module) -> None:
        if self.weight_init_std > 0:
            init_normal_(net, self.weight_init_std)

    def sample_outputs(self, num_samples: int):  # type: ignore[override]
        with dropout_active(self.net):
            return super().sample_outputs(num_samples)
