"""K independent copies of a network as one network: every layer with weights becomes grouped.

:func:`replicate_network` takes K networks of the same architecture and returns one module that
maps a replicate-major batch (K*B, C, H, W), block k being replicate k's B inputs, to the K
networks' outputs in the same layout. Every layer with parameters or buffers is replaced by one
layer over K times the channels in K groups (a grouped convolution, a batch norm over K*C channels)
wrapped in :class:`GroupedReplicas`, which moves the replicate axis into the channels and back.
Layers without state (activations, upsampling, padding, concatenation) run on the batch as they
are. A batch norm over K*C channels of a batch of one normalises each replicate's channels with
that replicate's own statistics, so nothing mixes between replicates: their gradients, Adam
moments and weight decay stay separate, and replicate k trains exactly as the network alone would.

Random numbers drawn inside the network (the mean-field layers' weight noise) come from one stream
per replicate (:class:`ReplicaNoise`), in the order a single network would draw them, so replicate k
also sees the noise of a run with its own seed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_lightning.errors import ConfigError
from dip_lightning.models.bayesian import MeanFieldConv2d
from dip_lightning.models.layers import SampleBatchNorm2d, grouped_conv2d


class ReplicaNoise:
    """One random stream per replicate, on the device of the tensors it draws for.

    Stream k is a generator seeded with ``seeds[k]``; drawing from it gives the numbers a run that
    seeded the global generator with ``seeds[k]`` would draw in the same order.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self._generators: list[torch.Generator] = []

    @property
    def count(self) -> int:
        return len(self.seeds)

    def reseed(self, seeds: Sequence[int] | None = None, device: torch.device | str = "cpu") -> None:
        """Restart every stream (with new seeds if given) on ``device``."""
        if seeds is not None:
            if len(seeds) != self.count:
                raise ValueError(f"need {self.count} seeds, got {len(seeds)}")
            self.seeds = [int(s) for s in seeds]
        self._generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]

    def get_state(self) -> list[Tensor]:
        """The streams' states (CPU byte tensors), for checkpoints; empty before the first draw."""
        return [g.get_state() for g in self._generators]

    def set_state(self, states: Sequence[Tensor], device: torch.device | str = "cpu") -> None:
        """Continue the streams from :meth:`get_state`'s states, on ``device``."""
        if len(states) != self.count:
            raise ValueError(f"need {self.count} stream states, got {len(states)}")
        self.reseed(device=device)
        for generator, state in zip(self._generators, states):
            generator.set_state(state.cpu())

    def normal(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Standard normal noise of ``shape`` from every stream, stacked: (K, *shape)."""
        if not self._generators or self._generators[0].device != like.device:
            self.reseed(device=like.device)
        return torch.stack(
            [
                torch.randn(tuple(shape), generator=g, device=like.device, dtype=like.dtype)
                for g in self._generators
            ]
        )

    def batch_like(self, x: Tensor) -> Tensor:
        """Noise shaped like a replicate-major batch (K*B, ...): block k from stream k."""
        return self.normal((x.shape[0] // self.count, *x.shape[1:]), x).flatten(0, 1)

    def grouped_like(self, x: Tensor) -> Tensor:
        """Noise shaped like a grouped tensor (B, K*C, ...): channel group k from stream k."""
        per_group = (x.shape[0], x.shape[1] // self.count, *x.shape[2:])
        return to_groups(self.normal(per_group, x).flatten(0, 1), self.count)


def to_groups(x: Tensor, replicates: int) -> Tensor:
    """(K*B, C, ...) replicate-major -> (B, K*C, ...) with replicate k in channel group k."""
    batch = x.shape[0] // replicates
    return x.unflatten(0, (replicates, batch)).transpose(0, 1).flatten(1, 2)


def from_groups(x: Tensor, replicates: int) -> Tensor:
    """The inverse of :func:`to_groups`."""
    return x.unflatten(1, (replicates, x.shape[1] // replicates)).transpose(0, 1).flatten(0, 1)


class GroupedReplicas(nn.Module):
    """Runs ``layer`` (K groups of channels, one per replicate) on a replicate-major batch."""

    def __init__(self, layer: nn.Module, replicates: int) -> None:
        super().__init__()
        self.layer = layer
        self.replicates = int(replicates)

    def forward(self, x: Tensor) -> Tensor:
        return from_groups(self.layer(to_groups(x, self.replicates)), self.replicates)

    def extra_repr(self) -> str:
        return f"replicates={self.replicates}"


class ReplicaConv2d(nn.Conv2d):
    """K convolutions as one grouped convolution (run group by group on a CPU, see
    :func:`~dip_lightning.models.layers.grouped_conv2d`)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return grouped_conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)


def _empty_conv(first: nn.Conv2d, k: int) -> nn.Conv2d:
    if first.groups != 1:
        raise ConfigError("method.replicates", k, "grouped convolutions cannot be replicated")
    return ReplicaConv2d(
        k * first.in_channels,
        k * first.out_channels,
        first.kernel_size,
        first.stride,
        first.padding,
        first.dilation,
        groups=k,
        bias=first.bias is not None,
        padding_mode=first.padding_mode,
    )


def _empty_norm(first: nn.Module, k: int) -> nn.Module:
    args = (k * first.num_features, first.eps, first.momentum, first.affine, first.track_running_stats)
    if isinstance(first, SampleBatchNorm2d):
        merged = SampleBatchNorm2d(*args)
        merged.per_sample = first.per_sample
        return merged
    return nn.InstanceNorm2d(*args)


def _empty_mean_field(first: MeanFieldConv2d, k: int, noise: ReplicaNoise) -> MeanFieldConv2d:
    merged = MeanFieldConv2d(
        k * first.in_channels,
        k * first.out_channels,
        first.kernel_size,
        first.stride,
        first.padding_mode,
        first.bias_mu is not None,
        prior_mu=float(first.prior_mu),
        prior_sigma=float(first.prior_sigma),
        groups=k,
    )
    merged.sample = first.sample
    merged.noise = noise.grouped_like
    return merged


def _merge(layers: Sequence[nn.Module], noise: ReplicaNoise) -> nn.Module:
    """One layer over K times the channels in K groups, holding the layers' weights in order."""
    first, k = layers[0], len(layers)
    if type(first) is nn.Conv2d:
        merged = _empty_conv(first, k)
    elif isinstance(first, SampleBatchNorm2d) or type(first) is nn.InstanceNorm2d:
        merged = _empty_norm(first, k)
    elif type(first) is MeanFieldConv2d:
        merged = _empty_mean_field(first, k, noise)
    else:
        raise ConfigError(
            "method.replicates",
            k,
            f"the network has {type(first).__name__} layers, which cannot be replicated",
        )
    reference = next(t for t in first.state_dict().values() if t.is_floating_point())
    merged.to(device=reference.device, dtype=reference.dtype)
    states = [layer.state_dict() for layer in layers]
    # per-channel tensors are concatenated replicate by replicate; scalars (counters, the prior) shared
    merged.load_state_dict(
        {
            name: value.clone() if value.dim() == 0 else torch.cat([s[name] for s in states])
            for name, value in states[0].items()
        }
    )
    return merged


def _has_own_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


def replicate_network(nets: Sequence[nn.Module], noise: ReplicaNoise) -> nn.Module:
    """One module computing all of ``nets`` (same architecture) on a replicate-major batch."""
    if len(nets) != noise.count:
        raise ValueError(f"{len(nets)} networks but {noise.count} noise streams")
    with torch.random.fork_rng(devices=[]):  # building the merged layers draws throwaway weights
        template = copy.deepcopy(nets[0])
        for name, module in list(template.named_modules()):
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
                raise ConfigError(
                    "method.replicates", len(nets), "networks with dropout cannot be replicated"
                )
            if not name or not _has_own_state(module):
                continue
            merged = _merge([net.get_submodule(name) for net in nets], noise)
            parent, _, attribute = name.rpartition(".")
            setattr(template.get_submodule(parent), attribute, GroupedReplicas(merged, len(nets)))
    return template


def replica_state_dict(net: nn.Module, index: int) -> dict[str, Tensor]:
    """The state dict replicate ``index`` would have as a network of its own."""
    grouped = {name for name, m in net.named_modules() if isinstance(m, GroupedReplicas)}
    state = {}
    for key, value in net.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        prefix, _, inner = owner.rpartition(".")
        if inner == "layer" and prefix in grouped:
            count = net.get_submodule(prefix).replicates
            key = f"{prefix}.{leaf}"
            value = value if value.dim() == 0 else value.chunk(count)[index]
        state[key] = value
    return state
