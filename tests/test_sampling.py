import math

import numpy as np
import pytest
import torch

from rnnlab.config import ModelConfig, SampleConfig
from rnnlab.models.lm import RecurrentLM
from rnnlab.sampling import beam_search, generate, make_stepper, sample_next_token


def empirical(logits, n=20000, **kwargs):
    draws = sample_next_token(logits.expand(n, -1), rng=np.random.default_rng(0), **kwargs)
    return torch.from_numpy(np.bincount(draws, minlength=logits.shape[-1])).float() / n


def test_sampling_follows_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    freq = empirical(logits)
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.015)


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert empirical(logits, temperature=0.5)[2] > empirical(logits)[2] > empirical(logits, temperature=2.0)[2]


def test_top_k_keeps_only_the_k_best():
    freq = empirical(torch.tensor([[3.0, 0.0, 2.0, 1.0]]), top_k=2)
    assert freq[1] == 0 and freq[3] == 0 and freq[0] > freq[2] > 0


def test_top_p_keeps_the_smallest_set_with_that_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    freq = empirical(probs.log(), top_p=0.75)
    assert freq[2] == 0 and freq[3] == 0
    assert math.isclose(freq[0].item(), 0.5 / 0.8, abs_tol=0.02)
    assert empirical(probs.log(), top_p=0.1)[0] == 1.0  # the most likely token always stays


def test_argmax():
    assert sample_next_token(torch.tensor([[0.1, 5.0, 0.2]]), argmax=True).item() == 1


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RecurrentLM(ModelConfig(num_layers=2, hidden_size=32, embedding_size=8), 12).eval()


def test_same_seed_same_text_other_seed_other_text(model):
    a = np.stack(list(generate(model, [1, 2], SampleConfig(length=50, seed=3))))
    b = np.stack(list(generate(model, [1, 2], SampleConfig(length=50, seed=3))))
    c = np.stack(list(generate(model, [1, 2], SampleConfig(length=50, seed=4))))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_num_samples_are_one_batch_of_independent_streams(model):
    tokens = np.stack(list(generate(model, [1], SampleConfig(length=30, num_samples=4, seed=1))))
    assert tokens.shape == (30, 4)
    assert len({tuple(column) for column in tokens.T.tolist()}) > 1


class Recording:
    """A stepper that records how many tokens each call reads: prime (T) or step (1)."""

    def __init__(self, model):
        self.model, self.vocab_size, self.calls = model, model.vocab_size, []

    def init_state(self, b):
        return self.model.init_state(b)

    def prime(self, tokens, state):
        self.calls.append(tokens.shape[1])
        return self.model.prime(tokens, state)

    def step(self, tokens, state):
        self.calls.append(tokens.dim())
        return self.model.step(tokens, state)


def test_progressive_generation_never_reruns_the_prefix(model):
    stepper = Recording(model)
    list(generate(stepper, [1, 2, 3, 4], SampleConfig(length=10)))
    assert stepper.calls == [4] + [1] * 9  # the prompt once, then one single-token step per new token


def sequence_log_prob(model, prime, continuation):
    tokens = torch.tensor([prime + continuation])
    logits, _, _ = model(tokens[:, :-1])
    log_probs = torch.log_softmax(logits, -1)[0, len(prime) - 1:]
    return log_probs.gather(-1, torch.tensor(continuation)[:, None]).sum().item()


def test_beam_search_beats_or_ties_greedy(model):
    prime = [3, 4]
    greedy = np.stack(list(generate(model, prime, SampleConfig(length=12, argmax=True))))[:, 0].tolist()
    with torch.inference_mode():
        beam = beam_search(model, prime, 12, beam_width=8)
        assert len(beam) == 12
        assert sequence_log_prob(model, prime, beam) >= sequence_log_prob(model, prime, greedy) - 1e-5
        assert beam_search(model, prime, 12, beam_width=1) == greedy  # one beam is greedy decoding


def test_beam_search_works_through_the_fast_engine(model):
    with torch.inference_mode():
        assert beam_search(make_stepper(model, SampleConfig()), [1], 10, 4) == beam_search(model, [1], 10, 4)


def test_windowed_and_progressive_agree_while_the_text_fits_the_window(model):
    prime = [1, 2, 3]
    progressive = np.stack(list(generate(model, prime, SampleConfig(length=20, seed=9))))
    windowed = np.stack(list(generate(model, prime, SampleConfig(length=20, seed=9, sampling="windowed",
                                                                    window=50))))
    assert np.array_equal(progressive, windowed)  # 3 + 20 tokens never leave a 50-token window


def test_windowed_sampling_forgets_what_left_the_window(model):
    stepper = Recording(model)
    list(generate(stepper, [1, 2, 3, 4, 5], SampleConfig(length=6, sampling="windowed", window=4)))
    assert stepper.calls == [4, 4, 4, 4, 4, 4]  # every token re-reads exactly the last 4 tokens, never steps
