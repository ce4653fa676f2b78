import math

import pytest
import torch

from rnnlab.config import TrainConfig
from rnnlab.training.optim import build_optimizer, learning_rate_at


def test_char_rnn_decay_once_per_epoch_after_decay_after():
    config = TrainConfig(schedule="char-rnn", learning_rate=2e-3, decay_after=10, decay_rate=0.5)
    assert learning_rate_at(config, 0, epochs_done=9, progress=0) == 2e-3
    assert learning_rate_at(config, 0, epochs_done=10, progress=0) == 1e-3
    assert learning_rate_at(config, 0, epochs_done=12, progress=0) == 2.5e-4


def test_cosine_runs_from_peak_to_floor():
    config = TrainConfig(schedule="cosine", learning_rate=1.0, min_lr_frac=0.1)
    assert learning_rate_at(config, 0, 0, 0.0) == 1.0
    assert math.isclose(learning_rate_at(config, 0, 0, 0.5), 0.55)
    assert math.isclose(learning_rate_at(config, 0, 0, 1.0), 0.1)


def test_warmup_is_linear():
    config = TrainConfig(schedule="constant", learning_rate=1.0, warmup_steps=4)
    assert [learning_rate_at(config, s, 0, 0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD),
                                       ("amsgrad", torch.optim.Adam), ("adagrad", torch.optim.Adagrad),
                                       ("adadelta", torch.optim.Adadelta), ("nt-asgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([param], TrainConfig(optimizer=name, learning_rate=0.1), torch.device("cpu"))
    assert isinstance(optimizer, cls)
    param.sum().backward()
    optimizer.step()
    assert (param < 1).all()


def test_amsgrad_is_adam_with_amsgrad():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = build_optimizer([param], TrainConfig(optimizer="amsgrad"), torch.device("cpu"))
    assert optimizer.param_groups[0]["amsgrad"] is True


def test_cyclic_and_plateau_schedules():
    cyclic = TrainConfig(schedule="cyclic", learning_rate=1.0, min_lr_frac=0.0, cycle_steps=4)
    assert [learning_rate_at(cyclic, s, 0, 0) for s in range(5)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    plateau = TrainConfig(schedule="plateau", learning_rate=2.0)
    assert learning_rate_at(plateau, 10, 0, 0, plateau_factor=0.25) == 0.5
    assert learning_rate_at(TrainConfig(schedule="none", learning_rate=3.0), 99, 5, 0.7) == 3.0


def test_nt_asgd_trigger_is_non_monotone():
    from rnnlab.training.optim import nt_asgd_triggered
    assert not nt_asgd_triggered([3.0, 2.9, 2.8], interval=2)  # still improving
    assert not nt_asgd_triggered([3.0, 2.5, 2.6], interval=2)  # worse than the last, not than the best before
    # AWD-LSTM: val_loss > min(best_val_loss[:-nonmono]), best_val_loss holding the earlier validations
    assert not nt_asgd_triggered([3.0, 2.5, 2.6, 2.7], interval=2)  # 2.5 is one of the 2 before 2.7
    assert nt_asgd_triggered([3.0, 2.5, 2.6, 2.7, 2.8], interval=2)  # worse than 2.5, from before the last 2
    assert not nt_asgd_triggered([3.0, 2.5, 2.6, 2.7, 2.4], interval=2)  # improving again
    assert not nt_asgd_triggered([3.0, 3.1], interval=1)  # len(previous) must exceed the interval
    assert nt_asgd_triggered([3.0, 2.9, 3.1], interval=1)


def test_weight_average_is_the_mean_of_the_iterates():
    from rnnlab.training.optim import WeightAverage
    param = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([param])
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            param.fill_(value)
        average.update()
    torch.testing.assert_close(average.average[0], torch.full((3,), 3.0))
    with average.swapped_in():
        assert torch.equal(param, torch.full((3,), 3.0))
    assert torch.equal(param, torch.full((3,), 6.0))
