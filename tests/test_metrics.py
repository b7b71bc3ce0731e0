"""HitRatio@1 and ValidRatio on hand-made inputs; sum states so DDP reduction is exact."""

import pytest
import torch

from lit_eraser.metrics import HitRatioAt1, ValidRatio


def test_hit_ratio_total_and_valid_views():
    preds = torch.tensor([0, 2, -1, 3, -1])
    target = torch.tensor([0, 1, 2, 3, 4])
    total, valid = HitRatioAt1(), HitRatioAt1(denominator="valid")
    total.update(preds, target)
    valid.update(preds, target)
    assert total.compute().item() == pytest.approx(2 / 5)
    assert valid.compute().item() == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_hit_ratio_from_scores_and_accumulation():
    metric = HitRatioAt1()
    metric.update(torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]]), torch.tensor([1, 1]))
    metric.update(torch.tensor([2]), torch.tensor([2]))
    assert metric.compute().item() == pytest.approx(2 / 3)
    metric.reset()
    assert metric.compute().item() == 0.0


def test_valid_ratio():
    metric = ValidRatio()
    metric.update(torch.tensor([0, -1, 5, -1]))
    assert metric.compute().item() == pytest.approx(0.5)
    empty = ValidRatio()
    empty.update(torch.tensor([], dtype=torch.long))
    assert empty.compute().item() == 0.0


def test_no_valid_predictions_gives_zero():
    metric = HitRatioAt1(denominator="valid")
    metric.update(torch.tensor([-1, -1]), torch.tensor([0, 1]))
    assert metric.compute().item() == 0.0


def test_states_are_sums_for_ddp():
    for metric in (HitRatioAt1(), ValidRatio()):
        assert metric._reductions and all(fx.__name__ == "dim_zero_sum" for fx in metric._reductions.values())


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        HitRatioAt1(denominator="all")
    with pytest.raises(ValueError):
        HitRatioAt1().update(torch.tensor([0, 1]), torch.tensor([0]))
