"""Random-number-generator states as tensors, so a checkpoint holds them and loads with
``torch.load(weights_only=True)`` (which refuses numpy arrays and pickled objects).

A resumed run draws the same input perturbations, dropout masks and weight samples as the run it
continues only if every generator it uses continues where it stopped: torch's CPU and CUDA
generators, numpy's and Python's global ones.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor


def capture() -> dict[str, Any]:
    """The states of the global generators (CUDA only once it is initialised)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set the global generators to a state from :func:`capture`."""
    torch.set_rng_state(_byte_tensor(state["torch"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(int(v) for v in python_state["internal"].tolist()),
            python_state["gauss"],
        )
    )
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in cuda])


def _byte_tensor(value: Tensor) -> Tensor:
    """Generator states must be CPU uint8 tensors (a checkpoint mapped to a GPU moves them)."""
    return value.detach().to(device="cpu", dtype=torch.uint8)
