import math

import numpy as np
import pytest
import torch

from rnnlab.config import ModelConfig
from rnnlab.evaluation import EvalResult, evaluate_tokens
from rnnlab.models.lm import RecurrentLM


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RecurrentLM(ModelConfig(num_layers=1, hidden_size=16, embedding_size=8), 7).eval()


def brute_force_nats(model, tokens):
    ids = torch.tensor(tokens, dtype=torch.long)[None]
    logits, _, _ = model(ids[:, :-1])
    return -torch.log_softmax(logits, -1)[0].gather(-1, ids[0, 1:, None]).sum().item()


def test_single_stream_equals_a_brute_force_pass(model):
    tokens = np.random.default_rng(0).integers(0, 7, 103)
    result = evaluate_tokens(model, tokens, batch_size=1, seq_length=10)
    assert result.tokens == 102
    assert math.isclose(result.total_nats, brute_force_nats(model, tokens), rel_tol=1e-5)


def test_columns_and_tail_score_every_token_once(model):
    tokens = np.random.default_rng(1).integers(0, 7, 1000)
    result = evaluate_tokens(model, tokens, batch_size=7, seq_length=16)
    assert result.tokens == 999
    whole = brute_force_nats(model, tokens)
    assert abs(result.total_nats - whole) / whole < 0.02  # only the 7 column starts lack context


def test_units_and_both_perplexity_conventions():
    result = EvalResult(total_nats=2 * math.log(2) * 10, tokens=10)
    assert math.isclose(result.bits_per_token, 2.0)
    assert math.isclose(result.perplexity, 4.0)  # e^(nats) == 2^(bits)
    assert math.isclose(result.perplexity_base2, 2 ** (2 * math.log(2)))  # the blog's 2^(nats)
    report = result.as_dict()
    assert {"nats_per_char", "bits_per_char", "perplexity", "perplexity_base2", "characters"} <= set(report)
    assert report["characters"] == 10  # a char-level result: one character per token


def test_bits_per_character_of_word_level_text():
    # 10 tokens covering 50 characters at 2 bits each: 20 bits over 50 characters
    result = EvalResult(total_nats=2 * math.log(2) * 10, tokens=10, characters=50)
    assert math.isclose(result.bits_per_token, 2.0) and math.isclose(result.perplexity, 4.0)
    assert math.isclose(result.bits_per_char, 0.4)
    assert result.as_dict()["characters"] == 50


def test_scored_characters_skip_the_unpredicted_first_tokens(model):
    tokens = np.arange(60) % 7
    lengths = np.arange(60) % 3 + 1  # 1, 2, 3, 1, 2, 3, ...
    result = evaluate_tokens(model, tokens, batch_size=3, seq_length=8, char_lengths=lengths)
    assert result.characters == int(lengths[1:].sum())
    burned = evaluate_tokens(model, tokens, batch_size=1, seq_length=8, burn_in=10, char_lengths=lengths)
    assert burned.characters == int(lengths[10:].sum()) and burned.tokens == 50


def test_evaluation_restores_training_mode(model):
    model.train()
    evaluate_tokens(model, np.arange(50) % 7, 2, 8)
    assert model.training


def test_burn_in_bootstraps_the_state_and_scores_the_rest(model):
    tokens = np.random.default_rng(2).integers(0, 7, 60)
    result = evaluate_tokens(model, tokens, batch_size=4, seq_length=8, burn_in=20)
    assert result.tokens == 40
    ids = torch.tensor(tokens, dtype=torch.long)[None]
    logits, _, _ = model(ids[:, :-1])
    scored = -torch.log_softmax(logits, -1)[0, 19:].gather(-1, ids[0, 20:, None]).sum().item()
    assert math.isclose(result.total_nats, scored, rel_tol=1e-5)


def test_dynamic_evaluation_lowers_the_loss_on_repeated_text_and_restores_the_weights(trained_checkpoint):
    from rnnlab.evaluation import dynamic_evaluate
    from rnnlab.training.checkpoint import load_checkpoint
    ckpt = load_checkpoint(trained_checkpoint)
    model = ckpt.build_model()
    tokens = ckpt.vocab.encode("the quick brown fox jumps over the lazy dog. " * 30)  # rewards adapting
    before = [p.detach().clone() for p in model.parameters()]
    static = evaluate_tokens(model, tokens, batch_size=1, seq_length=45)
    dynamic = dynamic_evaluate(model, tokens, seq_length=45, learning_rate=0.5, decay=0.0)
    assert dynamic.tokens == static.tokens == len(tokens) - 1
    assert dynamic.nats_per_token < static.nats_per_token - 0.3, (dynamic.nats_per_token, static.nats_per_token)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_windowed_evaluation_predicts_each_token_from_its_window_only():
    import torch

    from rnnlab.config import ModelConfig
    from rnnlab.evaluation import evaluate_tokens, evaluate_windowed
    from rnnlab.models.lm import RecurrentLM

    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(num_layers=2, hidden_size=16, embedding_size=4), 9).eval()
    tokens = np.random.default_rng(0).integers(0, 9, 60)
    whole = evaluate_windowed(model, tokens, window=100)  # every window holds all that came before
    progressive = evaluate_tokens(model, tokens, batch_size=1, seq_length=100)
    assert abs(whole.total_nats - progressive.total_nats) < 1e-3
    windowed = evaluate_windowed(model, tokens, window=5, batch_size=7)
    expected = 0.0
    with torch.inference_mode():
        for t in range(1, len(tokens)):
            context = torch.tensor(tokens[max(0, t - 5):t])[None]
            logits, _, _ = model(context)
            expected -= torch.log_softmax(logits[0, -1], -1)[tokens[t]].item()
    assert abs(windowed.total_nats - expected) < 1e-3 and windowed.tokens == len(tokens) - 1
    assert windowed.total_nats != whole.total_nats
    for burn_in in (3, 5, 12):  # the tokens a progressive evaluation with this burn-in scores, each windowed
        scored = evaluate_windowed(model, tokens, window=5, batch_size=4, burn_in=burn_in)
        expected = 0.0
        with torch.inference_mode():
            for t in range(burn_in, len(tokens)):
                logits, _, _ = model(torch.tensor(tokens[max(0, t - 5):t])[None])
                expected -= torch.log_softmax(logits[0, -1], -1)[tokens[t]].item()
        assert abs(scored.total_nats - expected) < 1e-3 and scored.tokens == len(tokens) - burn_in
        assert scored.tokens == evaluate_tokens(model, tokens, batch_size=1, seq_length=16, burn_in=burn_in).tokens
