import json
import math

import numpy as np
import pytest
import torch
from conftest import StopAfter, tiny_config

from rnnlab.data.corpus import prepare_corpus
from rnnlab.errors import CorpusError
from rnnlab.training.checkpoint import load_checkpoint
from rnnlab.training.loop import TrainingDiverged, fitting_hint, train


def unigram_entropy(tokens) -> float:
    counts = np.bincount(np.asarray(tokens)).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_a_tiny_model_learns_far_below_the_unigram_entropy(tmp_path):
    config = tiny_config(tmp_path, max_steps=200, eval_every=100, batch_size=16, seq_length=64, learning_rate=0.01)
    config.model.hidden_size = 64
    result = train(config, progress_bar=False)
    val = prepare_corpus(None).splits(0.05, 0.05).val
    entropy = unigram_entropy(val)  # about 3.3 nats/char: what a model without context achieves
    assert result.val_loss < entropy - 0.6, (result.val_loss, entropy)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    vals = [r for r in records if r["event"] == "val"]
    assert [r["step"] for r in vals] == [100, 200]
    assert vals[1]["val_loss"] < vals[0]["val_loss"]
    assert result.best_checkpoint.name.startswith("lm_lstm_epoch") and result.best_checkpoint.exists()


def losses(folder):
    out = {}
    for line in open(folder / "log.jsonl"):
        record = json.loads(line)
        if record["event"] in ("train", "val"):
            out[(record["event"], record["step"])] = record.get("train_loss", record.get("val_loss"))
    return out


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    kwargs = dict(max_steps=30, eval_every=10, log_every=1)
    straight = train(tiny_config(tmp_path / "a", **kwargs), progress_bar=False)
    stopped = train(tiny_config(tmp_path / "b", **kwargs), stop=StopAfter(13), progress_bar=False)
    assert stopped.interrupted and stopped.steps == 13
    resumed = train(load_checkpoint(tmp_path / "b", prefer="last").config, resume=tmp_path / "b",
                    progress_bar=False)
    assert resumed.steps == straight.steps == 30
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    after = [key for key in a if key[1] > 13]
    assert len(after) >= 17 and all(a[key] == b[key] for key in after)  # bit-for-bit
    assert math.isclose(resumed.val_loss, straight.val_loss, rel_tol=0, abs_tol=1e-6)


def test_an_exploding_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, max_steps=50, eval_every=1, learning_rate=1000.0, grad_clip=0.0,
                         schedule="constant")
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(config, progress_bar=False)
    last = load_checkpoint(tmp_path, prefer="last")
    assert math.isfinite(last.metrics["val_loss"])


def test_init_from_fine_tunes_on_text_with_a_subset_of_characters(tmp_path, trained_checkpoint):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question.\n" * 200, encoding="utf-8")
    result = train(tiny_config(tmp_path / "ft", data=text, max_steps=5, eval_every=5, seq_length=16),
                   init_from=trained_checkpoint, progress_bar=False)
    tuned = load_checkpoint(result.last_checkpoint)
    assert len(tuned.vocab) == 65  # the original model's vocabulary, so its weights still fit


def test_init_from_refuses_unknown_characters(tmp_path, trained_checkpoint):
    text = tmp_path / "text.txt"
    text.write_text("déjà vu — naïve\n" * 200, encoding="utf-8")
    with pytest.raises(CorpusError, match="vocabulary lacks: 'à', 'é', 'ï', '—'"):
        train(tiny_config(tmp_path / "ft", data=text), init_from=trained_checkpoint, progress_bar=False)


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train(tiny_config(tmp_path, max_steps=50, eval_every=5, keep_last=2), progress_bar=False)
    files = list(tmp_path.glob("*.safetensors"))
    assert 2 <= len(files) <= 3  # the newest two, plus the best if it is older


def test_fitting_hints():
    falling, stalled = [1.6, 1.5, 1.45, 1.3], [1.6, 1.25, 1.3, 1.31]
    assert "the model is overfitting" in fitting_hint(1.0, 1.31, stalled)
    assert "still falling: not overfitting yet" in fitting_hint(1.0, 1.3, falling)  # (measured: 1.516 vs 1.408)
    assert "underfitting" in fitting_hint(1.5, 1.51, [1.7, 1.6, 1.51])
    assert "healthy" in fitting_hint(1.4, 1.45, [1.6, 1.5, 1.45])
    for history in ([], [4.1], [4.1, 4.0]):  # an untrained model: no verdict
        hint = fitting_hint(4.0, 4.1, history)
        assert "too early to tell" in hint and "healthy" not in hint and "fitting;" not in hint


def test_resuming_a_fine_tuning_run_keeps_mapping_ids(tmp_path, trained_checkpoint):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question.\n" * 200, encoding="utf-8")
    config = tiny_config(tmp_path / "ft", data=text, max_steps=10, eval_every=5, seq_length=16, log_every=1)
    straight = train(config, init_from=trained_checkpoint, progress_bar=False)
    config_b = tiny_config(tmp_path / "ft2", data=text, max_steps=10, eval_every=5, seq_length=16, log_every=1)
    train(config_b, init_from=trained_checkpoint, stop=StopAfter(5), progress_bar=False)
    resumed = train(load_checkpoint(tmp_path / "ft2", prefer="last").config, resume=tmp_path / "ft2",
                    progress_bar=False)
    assert resumed.val_loss == straight.val_loss


def test_resume_of_a_weights_only_file_is_refused(tmp_path, trained_checkpoint):
    from rnnlab.errors import CheckpointError
    from rnnlab.training.checkpoint import save_checkpoint
    ckpt = load_checkpoint(trained_checkpoint)
    bare = save_checkpoint(tmp_path / "bare.safetensors", ckpt.build_model(), ckpt.config, ckpt.vocab, metrics={})
    with pytest.raises(CheckpointError, match="no training state to resume"):
        train(ckpt.config, resume=bare, progress_bar=False)


def test_training_with_awd_regularizers(tmp_path):
    config = tiny_config(tmp_path, max_steps=6, eval_every=3)
    for name, value in dict(dropout_embedding=0.1, dropout_input=0.2, dropout_hidden=0.2, dropout_output=0.2,
                            weight_drop=0.3, activation_regularization=2.0,
                            temporal_activation_regularization=1.0).items():
        setattr(config.model, name, value)
    result = train(config, progress_bar=False)
    assert math.isfinite(result.val_loss)
    assert load_checkpoint(result.last_checkpoint).config.model.weight_drop == 0.3


def test_nt_asgd_switches_to_averaging_evaluates_with_it_and_resumes_exactly(tmp_path, monkeypatch):
    import rnnlab.training.loop as loop
    monkeypatch.setattr(loop, "nt_asgd_triggered", lambda losses, interval: len(losses) >= 2)  # at validation 2
    kwargs = dict(max_steps=24, eval_every=4, log_every=1, optimizer="nt-asgd", learning_rate=0.5,
                  schedule="none")
    straight = train(tiny_config(tmp_path / "a", **kwargs), progress_bar=False)
    ckpt = load_checkpoint(straight.last_checkpoint)
    assert ckpt.trainer["averaging"]["count"] == 24 - 8  # averaging every step after validation 2 (step 8)
    raw = ckpt.prefixed("raw.")
    saved = list(ckpt.model_state.values())
    assert len(raw) == len(saved) and any(not torch.equal(a, b) for a, b in zip(raw, saved, strict=True))
    model = ckpt.build_model()  # the saved weights are the averaged ones: they give the logged val loss
    from rnnlab.data.corpus import prepare_corpus
    from rnnlab.evaluation import evaluate_tokens
    val = prepare_corpus(None).splits(0.05, 0.05).val
    assert math.isclose(evaluate_tokens(model, val, 16, 32).nats_per_token, ckpt.metrics["val_loss"], rel_tol=1e-6)
    train(tiny_config(tmp_path / "b", **kwargs), stop=StopAfter(14), progress_bar=False)
    train(load_checkpoint(tmp_path / "b", prefer="last").config, resume=tmp_path / "b", progress_bar=False)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(a[key] == b[key] for key in a if key[1] > 14)
    # stopped at the very validation that switched averaging on (step 8): it resumes, exactly
    train(tiny_config(tmp_path / "c", **kwargs), stop=StopAfter(8), progress_bar=False)
    assert load_checkpoint(tmp_path / "c", prefer="last").trainer["averaging"]["count"] == 0
    train(load_checkpoint(tmp_path / "c", prefer="last").config, resume=tmp_path / "c", progress_bar=False)
    c = losses(tmp_path / "c")
    assert all(a[key] == c[key] for key in a if key[1] > 8)


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_word_and_bpe_runs_resume_exactly_on_separate_files(tmp_path, ptb_folder, tokenizer):
    def config(folder):
        run = tiny_config(folder, data=ptb_folder, max_steps=12, eval_every=4, log_every=1)
        run.data.tokenizer, run.data.cache_dir = tokenizer, str(tmp_path / "cache")
        run.data.vocab_size = 300 if tokenizer == "bpe" else 0
        return run

    straight = train(config(tmp_path / "a"), progress_bar=False)
    train(config(tmp_path / "b"), stop=StopAfter(5), progress_bar=False)
    resumed = train(load_checkpoint(tmp_path / "b", prefer="last").config, resume=tmp_path / "b",
                    progress_bar=False)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(a[key] == b[key] for key in a if key[1] > 5)
    assert resumed.val_loss == pytest.approx(straight.val_loss, abs=1e-6)


def test_a_fine_tuned_word_run_resumes_on_its_model_vocabulary(tmp_path, ptb_folder):
    base = tiny_config(tmp_path / "base", data=ptb_folder, max_steps=3, eval_every=3)
    base.data.tokenizer = "word"
    train(base, progress_bar=False)
    text = tmp_path / "new.txt"
    text.write_text(" the new words of the king \n" * 300, encoding="utf-8")
    tuned = tiny_config(tmp_path / "ft", data=text, max_steps=6, eval_every=3, seq_length=16)
    tuned.data.tokenizer = "word"
    train(tuned, init_from=tmp_path / "base", stop=StopAfter(3), progress_bar=False)
    result = train(load_checkpoint(tmp_path / "ft", prefer="last").config, resume=tmp_path / "ft",
                   progress_bar=False)
    assert result.steps == 6
    assert load_checkpoint(tmp_path / "ft").vocab.tokens == load_checkpoint(tmp_path / "base").vocab.tokens


def test_a_run_on_a_relative_path_resumes_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 300, encoding="utf-8")
    monkeypatch.chdir(tmp_path / "data")
    train(tiny_config(tmp_path / "ck", data="t.txt", max_steps=8, eval_every=4), stop=StopAfter(4),
          progress_bar=False)
    saved = load_checkpoint(tmp_path / "ck", prefer="last").config
    assert saved.data.path == str(tmp_path / "data" / "t.txt")
    monkeypatch.chdir(tmp_path)
    assert train(saved, resume=tmp_path / "ck", progress_bar=False).steps == 8


def learning_rates(folder):
    return {r["step"]: r["lr"] for r in map(json.loads, open(folder / "log.jsonl")) if r["event"] == "train"}


def test_the_plateau_schedule_decays_after_flat_validations_and_resumes_on_the_same_rate(tmp_path, monkeypatch):
    import rnnlab.training.loop as loop
    from rnnlab.evaluation import EvalResult
    monkeypatch.setattr(loop, "evaluate_tokens", lambda *a, **k: EvalResult(2.0 * 100, 100))  # a flat val loss
    kwargs = dict(max_steps=12, eval_every=3, log_every=1, schedule="plateau", patience=1, decay_rate=0.5,
                  learning_rate=0.01)
    train(tiny_config(tmp_path / "a", **kwargs), progress_bar=False)
    rates = learning_rates(tmp_path / "a")
    # validations at steps 3, 6, 9: the first sets the best, each later one without improvement halves the rate
    assert [rates[s] for s in (1, 3, 4, 6, 7, 9, 10, 12)] == pytest.approx(
        [0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    for name, stop_after in (("b", 7), ("c", 0)):  # stopped mid-way, and before the first step
        train(tiny_config(tmp_path / name, **kwargs), stop=StopAfter(stop_after), progress_bar=False)
        train(load_checkpoint(tmp_path / name, prefer="last").config, resume=tmp_path / name, progress_bar=False)
        resumed = learning_rates(tmp_path / name)
        assert all(resumed[s] == rates[s] for s in rates), name


def test_the_cosine_schedule_runs_from_the_peak_to_its_floor(tmp_path):
    train(tiny_config(tmp_path, max_steps=20, eval_every=20, log_every=1, schedule="cosine", min_lr_frac=0.1,
                      learning_rate=0.01, warmup_steps=0), progress_bar=False)
    rates = learning_rates(tmp_path)
    assert rates[1] == pytest.approx(0.01)
    assert rates[20] == pytest.approx(0.001 + 0.5 * 0.009 * (1 + math.cos(math.pi * 19 / 20)))
    assert rates[20] < 0.00106 and all(rates[s] >= rates[s + 1] for s in range(1, 20))


def test_the_fitting_hint_of_a_word_model_compares_losses_per_character(tmp_path, ptb_folder):
    import re
    config = tiny_config(tmp_path, data=ptb_folder, max_steps=4, eval_every=4)
    config.data.tokenizer = "word"
    result = train(config, progress_bar=False)
    numbers = [float(x) for x in re.findall(r"(\d+\.\d{4})", result.hint)]
    val_per_char = next(n for n in numbers if n != result.train_loss)
    assert "nats/char" in result.hint
    assert "too early to tell" in result.hint  # (4 steps, one validation: no verdict on an untrained model)
    assert val_per_char < result.val_loss / 3  # a PTB word covers about 5.6 characters with its space
