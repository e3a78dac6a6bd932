"""Instantiating config nodes so that user-facing errors stay readable."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from dip_lightning.errors import DipError


def build(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own errors instead of Hydra's wrapper.

    Hydra wraps every exception raised by a ``_target_`` in an InstantiationException whose
    message is a stack of reprs; a setting or file error is clearer as it was raised.
    """
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, DipError):
            cause = cause.__cause__
        if isinstance(cause, DipError):
            raise cause from None
        raise
