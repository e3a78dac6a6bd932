"""Educated Deep Image Prior (Barbano et al. 2022): DIP fine-tuning that starts from a network
pretrained on synthetic data.

``python -m dip_lightning.pretrain`` trains the configured network supervised, mapping the FBP of
simulated sinograms of random-ellipse phantoms to the phantoms, and writes a small checkpoint.
The method then fits that network to the measured sinogram exactly as DIP(+TV) does, with the
FBP of the measurement as the network input. The pretrained network already outputs a good
image at step 0, so the fit needs far fewer steps than a DIP from random weights.

The checkpoint is a plain dictionary of tensors and numbers, read with ``torch.load(...,
weights_only=True)`` so that loading a file never runs code from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dip_lightning.errors import ConfigError, InputFileError
from dip_lightning.methods.base import DeepImagePrior
from dip_lightning.physics.observation import InverseProblem

CHECKPOINT_FORMAT = "dip_lightning.pretrained_network"
CHECKPOINT_VERSION = 1
SETTING = "method.checkpoint"
PRETRAIN_HINT = (
    "pretrain one with `python -m dip_lightning.pretrain task=ct` and this run's other overrides "
    "(it writes method.checkpoint)"
)
_LIGHTNING_PREFIX = "net."
_MAX_LISTED = 3


def save_pretrained(path: str | Path, net: nn.Module, **metadata: Any) -> Path:
    """Write ``net``'s weights and ``metadata`` (plain numbers, strings, lists, dicts) to ``path``.

    Written to a temporary name and renamed, so an interrupted save never leaves a file that looks
    like a checkpoint.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().clone() for name, tensor in net.state_dict().items()}
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state_dict": state, **metadata}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(record, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """Load a pretrained-network checkpoint, or raise an error naming ``method.checkpoint``.

    Accepts the files written by :func:`save_pretrained` and Lightning checkpoints of the
    pretraining module (whose network weights are prefixed with ``net.``).
    """
    if path is None or not str(path).strip():
        raise ConfigError(
            SETTING, path, f"educated DIP needs a pretrained network checkpoint; {PRETRAIN_HINT}"
        )
    file = Path(str(path)).expanduser()
    if not file.exists():
        raise InputFileError(file, f"{SETTING} names a file that does not exist; {PRETRAIN_HINT}")
    if not file.is_file():
        raise InputFileError(file, f"{SETTING} must name a checkpoint file, not a directory")
    try:
        record = torch.load(file, map_location="cpu", weights_only=True)
    except PermissionError as error:
        raise InputFileError(file, f"{SETTING} cannot be read ({error.strerror or error})") from None
    except Exception as error:  # arbitrary bytes make the unpickler fail in arbitrary ways
        text = str(error).strip()
        first_line = text.splitlines()[0][:200] if text else type(error).__name__
        raise InputFileError(
            file, f"{SETTING} is not a PyTorch network checkpoint ({first_line}); {PRETRAIN_HINT}"
        ) from None
    state = record.get("state_dict") if isinstance(record, dict) else None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise InputFileError(
            file, f"{SETTING} holds no network weights (no 'state_dict' of tensors); {PRETRAIN_HINT}"
        )
    if all(key.startswith(_LIGHTNING_PREFIX) for key in state):
        state = {key[len(_LIGHTNING_PREFIX) :]: value for key, value in state.items()}
    return file, {**record, "state_dict": state}


def shape_differences(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between ``net``'s parameters and a checkpoint's, empty if none."""
    expected = {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    differences = [
        f"{name}: checkpoint {found[name]} vs model {expected[name]}"
        for name in expected
        if name in found and found[name] != expected[name]
    ]
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing:
        differences.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:_MAX_LISTED])})")
    if unexpected:
        differences.append(f"{len(unexpected)} unknown weights (e.g. {', '.join(unexpected[:_MAX_LISTED])})")
    return differences


def load_pretrained(net: nn.Module, path: str | Path | None) -> dict[str, Any]:
    """Copy the checkpoint's weights into ``net`` and return its metadata."""
    return apply_checkpoint(net, *read_checkpoint(path))


def apply_checkpoint(net: nn.Module, file: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Copy a read checkpoint's weights into ``net``; a network of another shape is a ConfigError."""
    differences = shape_differences(net, record["state_dict"])
    if differences:
        listed = "; ".join(differences[:_MAX_LISTED])
        more = f" (and {len(differences) - _MAX_LISTED} more)" if len(differences) > _MAX_LISTED else ""
        raise ConfigError(
            SETTING,
            str(file),
            f"the checkpoint holds a network of another shape than the configured model ({listed}{more}); "
            "pretrain with the same model and method.input.channels, or pick the matching model",
        )
    net.load_state_dict(record["state_dict"])
    return {key: value for key, value in record.items() if key != "state_dict"}


class EducatedDIP(DeepImagePrior):
    """DIP(+TV) fine-tuning of a pretrained network, with the FBP of the measurement as input.

    Args:
        checkpoint: the network checkpoint written by ``python -m dip_lightning.pretrain``; it is
            read (and checked against the configured model) in :meth:`attach`, before training.
        The other arguments are those of :class:`DeepImagePrior`; the input kind defaults to
        ``pseudo_inverse`` (the FBP), which is what the network saw during pretraining.
    """

    def __init__(self, *args: Any, checkpoint: str | None = None, **kwargs: Any) -> None:
        settings = {"kind": "pseudo_inverse", "channels": 1, "scale": 1.0, "perturbation_std": 0.0}
        settings.update(dict(kwargs.pop("input", None) or {}))
        super().__init__(*args, input=settings, **kwargs)
        self.checkpoint = checkpoint
        self.pretraining: dict[str, Any] = {}

    def attach(self, problem: InverseProblem) -> EducatedDIP:
        # Read the file first: a bad path fails before the FBP and the network are built.
        file, record = read_checkpoint(self.checkpoint)
        super().attach(problem)
        self.pretraining = apply_checkpoint(self.net, file, record)
        return self
