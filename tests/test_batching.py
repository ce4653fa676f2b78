import numpy as np
import pytest
import torch

from rnnlab.data.batching import StreamBatcher, make_batcher
from rnnlab.errors import CorpusError


def test_columns_are_contiguous_and_batches_continue_them():
    tokens = np.arange(101, dtype=np.int64)
    batcher = StreamBatcher(tokens, batch_size=4, seq_length=5)
    assert batcher.column_length == 25 and batcher.batches_per_epoch == 5
    first, second = batcher.next_batch(), batcher.next_batch()
    assert first.starts_epoch and not second.starts_epoch
    assert first.inputs[:, 0].tolist() == [0, 25, 50, 75]
    assert first.inputs[1].tolist() == [25, 26, 27, 28, 29]
    assert first.targets[1].tolist() == [26, 27, 28, 29, 30]
    assert second.inputs[1].tolist() == [30, 31, 32, 33, 34]  # the stream carries on where it stopped


def test_epoch_wraps_and_drops_the_incomplete_batch():
    batcher = StreamBatcher(np.arange(50), batch_size=2, seq_length=7)  # columns of 24: 3 full batches
    batches = [batcher.next_batch() for _ in range(4)]
    assert [b.starts_epoch for b in batches] == [True, False, False, True]
    assert batcher.epoch == 1 and batcher.batch_index == 1
    assert batches[3].inputs.tolist() == batches[0].inputs.tolist()


def test_state_dict_resumes_the_stream():
    tokens = np.arange(1000)
    a = StreamBatcher(tokens, 3, 10)
    for _ in range(7):
        a.next_batch()
    b = StreamBatcher(tokens, 3, 10)
    b.load_state_dict(a.state_dict())
    assert a.next_batch().inputs.tolist() == b.next_batch().inputs.tolist()
    assert a.epoch_progress == b.epoch_progress


def test_id_map_translates_ids():
    batcher = StreamBatcher(np.array([0, 1, 0, 1, 0]), 1, 4, id_map=np.array([5, 7]))
    assert batcher.next_batch().inputs.tolist() == [[5, 7, 5, 7]]


def test_too_small_corpus_names_settings_that_fit():
    with pytest.raises(CorpusError, match=r"has 100 tokens.*--batch-size 1 or --seq-length 19"):
        StreamBatcher(np.arange(100), batch_size=5, seq_length=50)


def test_ranks_read_their_own_blocks_of_the_global_batch_and_a_too_small_split_says_so():
    """Under torchrun each rank's batcher draws the global batch (world x batch_size streams) and reads
    its own contiguous block: together the ranks read exactly what one process with the global batch
    reads."""
    from rnnlab.config import TrainConfig
    from rnnlab.training.distributed import Ranks

    tokens = np.arange(5000, dtype=np.int64) % 97
    for batching in ("streams", "equidistant", "random", "variable"):
        extra = {"k1": 8} if batching == "equidistant" else {}
        config = TrainConfig(batch_size=3, seq_length=16, batching=batching, **extra)
        whole = make_batcher(tokens, TrainConfig(batch_size=6, seq_length=16, batching=batching, **extra))
        parts = [make_batcher(tokens, config, ranks=Ranks(rank=r, world=2)) for r in range(2)]
        for _ in range(5):
            expected = whole.next_batch()
            got = [p.next_batch() for p in parts]
            assert torch.equal(torch.cat([g.inputs for g in got]), expected.inputs), batching
            assert all(g.lr_scale == expected.lr_scale for g in got)
    with pytest.raises(CorpusError, match=r"2 ranks x --batch-size 200 = 400 streams.*divide it by 2"):
        make_batcher(tokens, TrainConfig(batch_size=200, seq_length=16), ranks=Ranks(rank=0, world=2))
