"""What the GPU presets need: parameters and rnnlab's low estimate of training memory (fp32 weights,
gradients and two Adam moments, the logits and their gradient, one batch's activations) at each
preset's own batch, for the vocabulary size of the corpus it is meant for. The figures quoted in the
presets' "Needs:" header lines come from this script (computed on PyTorch's meta device: nothing is
allocated, no GPU is needed).

    python benchmarks/preset_memory.py
"""

from __future__ import annotations

from rnnlab.config import build_run_config
from rnnlab.models.size import parameter_count, training_bytes

# the vocabulary each preset's corpus gives (PTB chars 51, PTB words 10k, WikiText-103 267,735 words)
VOCABULARIES = {"char_ptb_awd_lstm": 51, "word_ptb_awd_lstm": 10_000, "word_ptb_qrnn": 10_000,
                "word_wikitext103_lstmlm": 267_735, "gpu_large_lstm": 100, "blog_sherlock_lstm": 97}


def main() -> None:
    print("| preset | vocabulary | parameters | batch | training memory (low estimate) |")
    print("| --- | --- | --- | --- | --- |")
    for name, vocabulary in VOCABULARIES.items():
        config = build_run_config(name, {})
        tc = config.train
        learned = tc.state == "learned"
        memory = training_bytes(config.model, vocabulary, tc.batch_size, tc.seq_length, learned)
        print(f"| {name} | {vocabulary:,} | {parameter_count(config.model, vocabulary, learned):,} | "
              f"{tc.batch_size} x {tc.seq_length} | {memory / 2 ** 30:.2f} GiB |")


if __name__ == "__main__":
    main()
