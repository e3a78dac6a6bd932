"""Operators with parameters fitted with the image (blind problems): optimised, saved and resumed.

The toy operator here blurs with a 3x3 kernel whose logits are parameters, as a blind deblurring
operator would with a kernel made by a small network of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip_lightning.config import compose_config
from dip_lightning.errors import ConfigError
from dip_lightning.job.run import build_method, build_problem, run
from dip_lightning.methods.sgld import langevin_parameters
from dip_lightning.physics.base import ForwardOperator

OPERATOR = "operator._target_=tests.test_learned_operator.LearnedBlur"
BASE = ("preset=small", "logger=none", "stopping=fixed", "data.size=32", OPERATOR)
KEY = "fitted_operator.logits"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LearnedBlur(ForwardOperator):
    """y = k * x with a learnable 3x3 kernel k = softmax(logits), the same for every channel."""

    measurement_in_image_space = True

    def __init__(self, image_shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.image_shape = image_shape
        centre = torch.full((3, 3), -2.0)
        centre[1, 1] = 2.0
        self.logits = nn.Parameter(centre)

    def kernel(self, channels: int) -> Tensor:
        return self.logits.flatten().softmax(0).view(1, 1, 3, 3).expand(channels, 1, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(x.shape[1]).to(x), padding=1, groups=x.shape[1])

    def adjoint(self, y: Tensor) -> Tensor:
        return F.conv_transpose2d(y, self.kernel(y.shape[1]).to(y), padding=1, groups=y.shape[1])


def job(root: Path, name: str, *overrides: str) -> dict[str, Tensor]:
    """Run a job into ``root/name``; return the state dict of its last checkpoint."""
    run(compose_config([*BASE, *overrides], root / name))
    return torch.load(root / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_the_operator_is_registered_and_its_parameters_are_optimised(small_config):
    cfg = small_config(*BASE[2:])
    method = build_method(cfg, build_problem(cfg))
    assert method.fitted_operator is method.problem.operator
    assert method.operator_parameters() == [method.problem.operator.logits]
    optimised = {id(p) for group in method.build_optimizer().param_groups for p in group["params"]}
    assert id(method.problem.operator.logits) in optimised
    assert KEY in method.state_dict()


@pytest.mark.parametrize("task", ["denoising", "inpainting"])
def test_an_operator_without_parameters_stays_out_of_the_checkpoint(small_config, task):
    cfg = small_config(f"task={task}", "data.size=32")
    method = build_method(cfg, build_problem(cfg))
    assert method.fitted_operator is None and method.operator_parameters() == []
    assert not [name for name in method.state_dict() if name.startswith("fitted_operator")]
    assert not [name for name in method.state_dict() if "mask" in name]  # the inpainting mask buffer


def test_operator_parameters_change_are_saved_and_a_resumed_run_continues_from_them(tmp_path):
    initial = LearnedBlur().logits.detach()
    full = job(tmp_path, "full", "trainer.max_steps=10")
    half = job(tmp_path, "half", "trainer.max_steps=5")
    resumed = job(tmp_path, "resumed", "trainer.max_steps=10", f"ckpt_path={tmp_path / 'half'}")
    assert (half[KEY] - initial).abs().max() > 1e-4  # fitted during the first five steps
    assert (full[KEY] - half[KEY]).abs().max() > 1e-5  # and further during the next five
    # The resumed run started from the saved kernel: it ends where the uninterrupted run ends.
    assert resumed.keys() == full.keys()
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_replicated_run_refuses_an_operator_fitted_with_the_image(small_config):
    cfg = small_config(*BASE[2:], "method.replicates=2")
    with pytest.raises(ConfigError, match="shared by the replicates") as info:
        build_method(cfg, build_problem(cfg))
    assert info.value.setting == "method.replicates"


@pytest.mark.parametrize("langevin", ["reference", "psgld"])
def test_sgld_adds_langevin_noise_to_the_image_weights_only(small_config, langevin):
    cfg = small_config(*BASE[2:], "method=sgld", f"method.langevin={langevin}", "noise.sigma=0.1")
    method = build_method(cfg, build_problem(cfg))
    operator = method.problem.operator.logits
    if langevin == "reference":
        noisy = {id(p) for p in langevin_parameters(method.net, "all")}
        assert id(operator) not in noisy
        return
    sampler = method.build_optimizer()
    assert [group["temperature"] for group in sampler.param_groups] == [1.0, 0.0]
    before = {id(p): p.detach().clone() for group in sampler.param_groups for p in group["params"]}
    for group in sampler.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    sampler.generator = torch.Generator().manual_seed(0)
    sampler.step()
    assert torch.equal(operator.detach(), before[id(operator)])  # no gradient, no noise: unchanged
    weights = [p for p in method.net.parameters() if p.dim() > 1]
    assert any(not torch.equal(p.detach(), before[id(p)]) for p in weights)  # the weights are sampled
