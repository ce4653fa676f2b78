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
                                       ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([param], TrainConfig(optimizer=name, learning_rate=0.1), torch.device("cpu"))
    assert isinstance(optimizer, cls)
    param.sum().backward()
    optimizer.step()
    assert (param < 1).all()
