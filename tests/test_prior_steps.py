"""vqtool.models.steps: the coding path's logits against the teacher-forced forward, and its
arithmetic per row independent of the rest of the batch."""

from __future__ import annotations

import pytest
import torch
from test_prior_model import GRID, TINY, TINY_CONDITIONAL, T, random_codes, tiny_prior
from torch import Tensor

from vqtool.models.config import PriorConfig
from vqtool.models.steps import PriorSteps
from vqtool.models.transformer import CodePrior


def stepped_logits(model: CodePrior, codes: Tensor, rows: int | None = None) -> Tensor:
    """Every position's logits through PriorSteps, fed the given codes (padded with code 0 to
    `rows` sequences): (B, h, w) -> (B, T, K)."""
    b = codes.shape[0]
    flat = torch.zeros(rows or b, T, dtype=torch.long)
    flat[:b] = codes.reshape(b, -1)
    with torch.inference_mode():
        steps = PriorSteps(model, rows or b)
        logits = [steps.next(None)]
        logits += [steps.next(flat[:, t]) for t in range(T - 1)]
    return torch.stack(logits, 1)[:b]


@pytest.mark.parametrize("cfg", [TINY, PriorConfig(layers=3, width=48, heads=2, mlp_ratio=2)])
def test_steps_match_the_forward_logits(cfg: PriorConfig) -> None:
    model = tiny_prior(cfg)
    codes = random_codes(5)
    with torch.no_grad():
        full = model(codes)
    torch.testing.assert_close(stepped_logits(model, codes), full, rtol=0, atol=1e-5)


def test_a_rows_logits_do_not_depend_on_the_other_rows() -> None:
    """The same three grids padded to 4 rows, beside five others, and padded to 16 (batches
    of at least 4 rows, as coding runs them): bit-identical logits."""
    model = tiny_prior()
    codes = random_codes(8)
    alone = stepped_logits(model, codes[:3], rows=4)
    assert torch.equal(stepped_logits(model, codes)[:3], alone)
    assert torch.equal(stepped_logits(model, codes[:3], rows=16), alone)


def test_steps_refuse_misuse() -> None:
    model = tiny_prior()
    with pytest.raises(ValueError, match="conditional"):
        PriorSteps(tiny_prior(TINY_CONDITIONAL), 2)
    with torch.inference_mode():
        steps = PriorSteps(model, 2)
        with pytest.raises(ValueError, match="None exactly"):
            steps.next(torch.zeros(2, dtype=torch.long))
        steps.next(None)
        with pytest.raises(ValueError, match="None exactly"):
            steps.next(None)
        for _ in range(T - 1):
            steps.next(torch.zeros(2, dtype=torch.long))
        with pytest.raises(ValueError, match="positions are done"):
            steps.next(torch.zeros(2, dtype=torch.long))
    assert GRID[0] * GRID[1] == T
