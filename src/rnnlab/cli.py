"""The `rnnlab` command: parse flags -> build configs -> call the library -> print.

Every subcommand turns user mistakes (RnnlabError) into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from rnnlab import __version__
from rnnlab.config import (
    DataConfig,
    EvalConfig,
    GridExperimentConfig,
    InspectConfig,
    MatrixConfig,
    ModelConfig,
    NoveltyConfig,
    PlotConfig,
    RunConfig,
    SampleConfig,
    SchemesExperimentConfig,
    ServeConfig,
    SweepConfig,
    TrainConfig,
    add_flags,
    build_run_config,
    build_section,
    overrides_from_args,
    unused_settings,
)
from rnnlab.data.corpus import encode_file_to_memmap, prepare_from_config
from rnnlab.data.text import read_text_chunks, resolve_text_path
from rnnlab.data.vocab import describe_chars
from rnnlab.errors import ConfigError, CorpusError, RnnlabError, os_error_line
from rnnlab.sampling import (
    complete_texts,
    make_stepper,
    prompt_ids,
    sample_config_for,
    sampling_defaults,
    stream_text,
)

# torch-based modules are imported inside the commands that need them, so `rnnlab prepare` (and
# --help) stay light: importing torch alone takes ~220 MB of memory.

log = logging.getLogger("rnnlab")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description="Train, sample and evaluate recurrent language models.")
    parser.add_argument("--quiet", action="store_true", help="only print results and errors")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    quiet = argparse.ArgumentParser(add_help=False)  # --quiet is accepted after the subcommand too
    quiet.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="only print results and errors")

    p = commands.add_parser("train", help="train a model on a text file", parents=[quiet])
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="UTF-8 text file or folder with input.txt (default: embedded tinyshakespeare)")
    p.add_argument("--config", metavar="PRESET", help="a preset: a TOML file, or the name of one shipped with rnnlab "
                                                        "(e.g. char_rnn_classic; see README's Presets); flags override it")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue this run exactly (a file, or a folder's last)")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start a new run from these weights and vocabulary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p, "data", DataConfig, skip=("path",))
    add_flags(p, "model", ModelConfig)
    add_flags(p, "train", TrainConfig)
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser("sample", help="generate text from a checkpoint", parents=[quiet])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or folder (its best checkpoint)")
    add_flags(p, "sample", SampleConfig)
    p.set_defaults(handler=cmd_sample)

    p = commands.add_parser("eval", help="cross-entropy, bits per character and perplexity of a text file",
                            parents=[quiet])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or folder (its best checkpoint)")
    p.add_argument("file", metavar="FILE", nargs="?", default=None,
                   help="UTF-8 text file to score (or --split val|test)")
    add_flags(p, "eval", EvalConfig)
    p.set_defaults(handler=cmd_eval)

    p = commands.add_parser("experiment", help="reproducible comparisons", parents=[quiet])
    experiments = p.add_subparsers(dest="experiment", required=True)
    e = experiments.add_parser("schemes", parents=[quiet],
                               help="the paper's four training/sampling schemes: timings, perplexity plot, summary")
    e.add_argument("data", metavar="DATA", nargs="?", default=None, help="text file (default: embedded corpus)")
    add_flags(e, "experiment", SchemesExperimentConfig, skip=("data",))
    e.set_defaults(handler=cmd_experiment_schemes)
    e = experiments.add_parser("grid", parents=[quiet],
                               help="the paper's experiment grid: architectures x schemes, schemes x corpora, k2 "
                                    "against time, repeats; each scheme scored the way it samples")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(e, "grid", GridExperimentConfig)
    e.set_defaults(handler=cmd_experiment_grid)

    p = commands.add_parser("matrix", help="every model evaluated on every corpus (the blog's cross-dataset table)",
                            parents=[quiet])
    add_flags(p, "matrix", MatrixConfig)
    p.set_defaults(handler=cmd_matrix)

    p = commands.add_parser("sweep", help="a hyperparameter search on Optuna, each trial a normal run; report and "
                                          "plots", parents=[quiet])
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="UTF-8 text file or folder with input.txt (default: embedded tinyshakespeare)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p, "sweep", SweepConfig)
    p.set_defaults(handler=cmd_sweep)

    p = commands.add_parser("serve", help="a web page and JSON API that auto-complete text with trained models",
                            parents=[quiet])
    p.add_argument("checkpoints", metavar="CHECKPOINT_OR_DIR", nargs="*",
                   help="models to serve, optionally as name=path (default: a small model trained on the embedded "
                        "corpus on first use and cached)")
    add_flags(p, "serve", ServeConfig)
    p.set_defaults(handler=cmd_serve)

    p = commands.add_parser("export", help="export a checkpoint's step for onnxruntime (hosts without PyTorch)",
                            parents=[quiet])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or folder (its best checkpoint)")
    p.add_argument("--onnx", action="store_true", help="export to ONNX (the default, and the one format for now)")
    p.add_argument("--out", default="model.onnx", help="output file; FILE.json goes beside it (default: model.onnx)")
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser("inspect", help="what a checkpoint holds: model, vocabulary, step, losses, format",
                            parents=[quiet])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or folder (its best checkpoint)")
    add_flags(p, "inspect", InspectConfig)
    p.set_defaults(handler=cmd_inspect)

    p = commands.add_parser("novelty", help="how much of a sample is copied verbatim from the training text",
                            parents=[quiet])
    p.add_argument("source", metavar="SOURCE", help="a checkpoint (its seeded sample is checked) or a sample's text file")
    p.add_argument("train_text", metavar="TRAIN_TEXT", help="the training text (a file, or a folder with input.txt)")
    add_flags(p, "novelty", NoveltyConfig)
    p.set_defaults(handler=cmd_novelty)

    p = commands.add_parser("plot", help="loss curves of runs from their logs, in one PNG", parents=[quiet])
    p.add_argument("runs", metavar="RUN_DIR", nargs="+", help="checkpoint folders (each holds log.jsonl)")
    add_flags(p, "plot", PlotConfig)
    p.set_defaults(handler=cmd_plot)

    p = commands.add_parser("prepare", help="prepare (cache) the token file of a text corpus", parents=[quiet])
    p.add_argument("data", metavar="DATA", nargs="?", default=None, help="text file or folder with input.txt")
    add_flags(p, "data", DataConfig, skip=("path",))
    p.set_defaults(handler=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    # a prepared token file truncated under a running job ends it with SIGBUS, which Python cannot
    # catch: this at least says so ("Fatal Python error: Bus error") instead of dying silently
    with contextlib.suppress(AttributeError, ValueError, OSError):  # (stderr may be no file: a test's capture)
        faulthandler.enable()
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    code = _run(args)
    if _rank_prefix() and args.handler is cmd_train:
        # a torchrun worker leaves at once: tearing down a process group and DDP's reducer at interpreter
        # exit can wait forever for a peer that has already gone (seen once on gloo under load)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args) -> int:
    try:
        return args.handler(args) or 0
    except RnnlabError as exc:
        print(f"rnnlab: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return 130
    except UnicodeEncodeError as exc:  # e.g. PYTHONIOENCODING=ascii, or a C locale, and text beyond it
        if exc.encoding.lower().replace("-", "") == "utf8":
            print(f"rnnlab: error: text that is not valid Unicode (a lone surrogate): {exc.reason}", file=sys.stderr)
        else:
            print(f"rnnlab: error: the output's encoding ({exc.encoding}) cannot write this text; set "
                  f"PYTHONIOENCODING=utf-8 (or a UTF-8 locale)", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `rnnlab sample ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"rnnlab: error: {os_error_line(exc)}", file=sys.stderr)
        return 1


def _rank_prefix() -> str:
    """Under torchrun, which rank speaks (each prints its own error)."""
    return f"rank {os.environ['RANK']}: " if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1") and \
        os.environ.get("RANK") else ""


# --- train ---------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from rnnlab.training.distributed import leave_process_group
    from rnnlab.training.loop import StopRequest, train
    from rnnlab.training.run import resolve_run

    overrides = overrides_from_args(args)
    if args.data is not None:
        overrides.setdefault("data", {})["path"] = args.data
    stop = StopRequest()

    def request_stop(signum, _frame):
        if not stop.training:  # still preparing the corpus or building the model: nothing to save yet
            raise KeyboardInterrupt
        stop.request(f"received {signal.Signals(signum).name}")
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run = resolve_run(args.config, overrides, resume=args.resume, init_from=args.init_from)
        result = train(run, stop=stop, progress_bar=not args.no_progress and not args.quiet)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run.step.forward = getattr(run.step.forward, "module", run.step.forward)  # (DDP's wrapper goes first)
    leave_process_group()  # (after a clean end only: NCCL's teardown can hang while another rank is gone)
    if result.rank != 0:  # (under torchrun, rank 0 reports for the job)
        return 0

    print(f"{'interrupted' if result.interrupted else 'done'} after {result.steps} steps "
          f"(epoch {result.epoch:.2f}); {result.num_parameters:,} parameters")
    print(f"last checkpoint: {result.last_checkpoint}")
    config = run.config
    unit = "char" if config.data.tokenizer == "char" else "token"
    print(f"best checkpoint: {result.best_checkpoint} (val loss {result.best_val_loss:.4f} nats/{unit})")
    if result.hint:
        print(f"hint: {result.hint}")
    if config.train.sample_length and not result.interrupted:
        _print_preview(result.best_checkpoint, config.train.sample_length, config.train.seed)
    return 0


def _print_preview(checkpoint: Path, length: int, seed: int) -> None:
    from rnnlab.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, weights_only=True)
    print("sample:")
    config = sample_config_for(ckpt.config.train, {"length": length, "seed": seed})
    _print_samples(ckpt.build_model("cpu"), ckpt.vocab, prompt_ids(ckpt.vocab, ""), config)


# --- sample --------------------------------------------------------------------------------------

def cmd_sample(args) -> int:
    from rnnlab.models.size import check_fits, sampling_bytes
    from rnnlab.training.checkpoint import load_checkpoint
    from rnnlab.training.step import select_device

    ckpt = load_checkpoint(args.checkpoint, weights_only=True)
    config = sample_config_for(ckpt.config.train, overrides_from_args(args).get("sample", {}))
    device = select_device(config.device)
    model = ckpt.build_model(device)
    streams = config.beam_width or config.num_samples
    check_fits(sampling_bytes(model, streams, beam=bool(config.beam_width)), device,
               f"generating {streams:,} {'beams' if config.beam_width else 'samples'} at once",
               "lower --num-samples or --beam-width")
    prompt = prompt_ids(ckpt.vocab, _read_prime(config), config.unknown)
    if prompt.dropped:
        log.warning("dropping prime %s not in the vocabulary: %s",
                    "characters" if ckpt.vocab.kind == "char" else "words", describe_chars(prompt.dropped))
    _print_samples(model, ckpt.vocab, prompt, config)
    return 0


def _read_prime(config: SampleConfig) -> str:
    if config.prime_file and config.prime_text:
        raise ConfigError("give --prime-text or --prime-file, not both")
    if not config.prime_file:
        return config.prime_text
    path = resolve_text_path(config.prime_file)
    return "".join(read_text_chunks(path))


def _print_samples(model, vocab, prompt, config: SampleConfig) -> None:
    """One sample streams to stdout as it is generated; several (or a beam search) print when done."""
    out = sys.stdout
    stepper = make_stepper(model, config)
    if config.num_samples > 1 or config.beam_width:
        texts = complete_texts(stepper, vocab, prompt, config)
        if len(texts) == 1:
            out.write(f"{prompt.text}{texts[0]}\n")
        for i, text in enumerate(texts if len(texts) > 1 else []):
            out.write(f"--- sample {i + 1} ---\n{prompt.text}{text}\n")
        out.flush()
        return
    out.write(prompt.text)
    interactive = out.isatty()
    for (piece,) in stream_text(stepper, vocab, prompt, config):
        out.write(piece)
        if interactive or "\n" in piece:
            out.flush()
    out.write("\n")
    out.flush()


# --- eval ----------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    from rnnlab.training.checkpoint import load_checkpoint
    from rnnlab.training.step import select_device

    given = overrides_from_args(args).get("eval", {})
    ckpt = load_checkpoint(args.checkpoint, weights_only=True)
    defaults = {} if "sampling" in given or given.get("dynamic") or given.get("burn_in") else \
        sampling_defaults(ckpt.config.train)  # a scheme 1/2 model is scored windowed, the way it samples
    config = build_section(EvalConfig, {**defaults, **given})
    if bool(config.split) == (args.file is not None):
        raise ConfigError("give a FILE to score, or --split val|test for the checkpoint's own held-out split")
    device = select_device(config.device)
    model = ckpt.build_model(device)
    if config.split:
        tokens, lengths, source = _held_out_split(ckpt, config.split)
        result = _evaluate(config, model, tokens, lengths, device, ckpt)
    else:
        source = resolve_text_path(args.file)
        with tempfile.TemporaryDirectory(prefix="rnnlab-eval-") as scratch:
            try:
                encoded = encode_file_to_memmap(source, ckpt.vocab, Path(scratch))
            except RnnlabError as exc:  # name the file once
                raise CorpusError(str(exc) if str(source) in str(exc) else f"{source}: {exc}") from None
            if len(encoded.tokens) < 2:
                raise CorpusError(f"{source} needs at least two tokens to score")
            result = _evaluate(config, model, encoded.tokens, encoded.char_lengths, device, ckpt)
            del encoded
    report = {**result.as_dict(), "tokenizer": ckpt.vocab.kind, "evaluation": config.sampling,
              **({"window": config.window} if config.sampling == "windowed" else {}),
              **({"split": config.split} if config.split else {})}
    if config.json:
        print(json.dumps(report))
    else:
        print(format_report(source, result, ckpt.vocab.kind, config.burn_in))
        if config.sampling == "windowed":
            print(f"evaluation: windowed, each token from the {config.window} before it only"
                  f"{' (this model was trained with scheme ' + str(ckpt.config.train.scheme) + ')' if defaults else ''}")
    return 0


def _evaluate(config: EvalConfig, model, tokens, lengths, device, ckpt):
    from rnnlab.evaluation import dynamic_evaluate, evaluate_tokens, evaluate_windowed

    if config.sampling == "windowed":
        return evaluate_windowed(model, tokens, config.window, config.batch_size, device, char_lengths=lengths)
    if config.dynamic:
        return dynamic_evaluate(model, tokens, config.seq_length or 50, config.dynamic_lr, config.dynamic_decay,
                                device, char_lengths=lengths)
    return evaluate_tokens(model, tokens, config.batch_size, config.seq_length or ckpt.config.train.seq_length,
                           device, burn_in=config.burn_in, char_lengths=lengths)


def _held_out_split(ckpt, split: str):
    """The checkpoint's own validation or test split: its corpus, prepared (or found in the cache) as its
    run cut it, in its vocabulary. The corpus's files are read, never written (the cache is the user's)."""
    import dataclasses

    from rnnlab.data.corpus import user_cache_root
    from rnnlab.training.run import corpus_in_vocabulary

    data = dataclasses.replace(ckpt.config.data, cache_dir=str(user_cache_root()))
    where = data.path or "the embedded tinyshakespeare"
    if data.path and not Path(data.path).exists():
        raise CorpusError(f"the checkpoint's corpus {data.path} is not here: score a FILE instead")
    corpus = corpus_in_vocabulary(data, ckpt.vocab, compare_own=True, named=ckpt.path)
    if corpus.meta["blake2b"] != ckpt.metrics.get("corpus_digest", corpus.meta["blake2b"]):
        raise CorpusError(f"the checkpoint's corpus {where} changed since it was trained: its {split} split "
                          f"is not the one held out; score a FILE instead")
    splits = corpus.splits(data.val_frac, data.test_frac)
    tokens = getattr(splits, split)
    if len(tokens) < 2:
        raise CorpusError(f"the checkpoint's {split} split holds {len(tokens)} tokens: nothing to score")
    return tokens, splits.lengths(split), f"the {split} split of {where}"


def format_report(text_path, result, tokenizer: str, burn_in: int = 0) -> str:
    burn = f" (after a burn-in of {burn_in})" if burn_in else ""
    lines = [f"file: {text_path}" if isinstance(text_path, Path) else f"text: {text_path}"]
    if tokenizer == "char":
        lines.append(f"characters scored: {result.tokens:,}{burn}")
    else:
        lines += [f"tokens scored: {result.tokens:,} ({tokenizer}){burn}, covering {result.scored_characters:,} "
                  f"characters", f"nats per token: {result.nats_per_token:.4f}",
                  f"bits per token: {result.bits_per_token:.4f}"]
    unit = "character" if tokenizer == "char" else "token"
    lines += [f"nats per character: {result.nats_per_char:.4f}", f"bits per character: {result.bits_per_char:.4f}",
              f"perplexity per {unit} (e^H, H in nats): {result.perplexity:.4f}",
              f"perplexity per {unit} (2^H, H in nats, the blog's convention): {result.perplexity_base2:.4f}"]
    return "\n".join(lines)


# --- experiment ----------------------------------------------------------------------------------

def cmd_experiment_schemes(args) -> int:
    from rnnlab.experiments.schemes import run_schemes_experiment

    settings = build_section(SchemesExperimentConfig, {**overrides_from_args(args).get("experiment", {}),
                                                        "data": args.data})
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RnnlabError("the schemes experiment plots with matplotlib: pip install 'rnnlab[experiments]'") from None
    run_schemes_experiment(settings, log=log.info)
    out = Path(settings.out)
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(f"written: {out / 'table4.md'}, {out / 'fig9.png'}, {out / 'summary.md'}")
    return 0


def cmd_experiment_grid(args) -> int:
    from rnnlab.experiments.grid import run_grid
    from rnnlab.experiments.sweep import SweepInterrupted

    config = build_section(GridExperimentConfig, overrides_from_args(args).get("grid", {}))
    try:
        import matplotlib  # noqa: F401
        import optuna  # noqa: F401
    except ImportError:
        raise RnnlabError("rnnlab experiment grid runs on Optuna and draws with matplotlib: "
                          "pip install 'rnnlab[sweep]'") from None
    try:
        run_grid(config, progress_bar=not args.no_progress and not args.quiet, verbose=not args.quiet)
    except SweepInterrupted as exc:
        print(f"rnnlab: interrupted: {exc}", file=sys.stderr)
        return 130
    out = Path(config.out)
    print((out / "grid.md").read_text(encoding="utf-8").split("\n## Final")[0].rstrip())
    print(f"written: {out / 'grid.md'}, {out / 'grid.json'} and the figures in {out}")
    return 0


# --- sweep ---------------------------------------------------------------------------------------

def cmd_sweep(args) -> int:
    from rnnlab.experiments.sweep import SweepInterrupted, prepare_sweep, run_sweep

    config = build_section(SweepConfig, overrides_from_args(args).get("sweep", {}))
    try:
        import matplotlib  # noqa: F401
        import tomli_w  # noqa: F401
    except ImportError:
        raise RnnlabError("rnnlab sweep writes its preset and plots with tomli-w and matplotlib: "
                          "pip install 'rnnlab[sweep]'") from None
    sweep = prepare_sweep(config, args.data)
    interrupted = False
    try:
        study = run_sweep(sweep, progress_bar=not args.no_progress and not args.quiet, verbose=not args.quiet)
    except (SweepInterrupted, KeyboardInterrupt) as exc:  # (the report is written with what there is)
        interrupted, study = str(exc) or "the running trials were checkpointed; the same command continues", None
    written = _sweep_outputs(sweep, study)
    if interrupted:
        print(f"rnnlab: interrupted: {interrupted}", file=sys.stderr)
        return 130
    print((sweep.out / "report.md").read_text(encoding="utf-8").split("\n## ")[0].rstrip())
    print(f"written: {', '.join(str(path) for path in written.values())}")
    return 0


def _sweep_outputs(sweep, study) -> dict:
    from rnnlab.experiments.sweep import open_study
    from rnnlab.experiments.sweep_report import write_outputs

    return write_outputs(sweep, study or open_study(sweep, worker=0))


# --- matrix --------------------------------------------------------------------------------------

def cmd_matrix(args) -> int:
    from rnnlab.experiments.matrix import run_matrix

    config = build_section(MatrixConfig, overrides_from_args(args).get("matrix", {}))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RnnlabError("the matrix draws its heatmap with matplotlib: pip install 'rnnlab[experiments]'") from None
    Path(config.out).mkdir(parents=True, exist_ok=True)
    run_matrix(config)
    out = Path(config.out)
    print((out / "matrix.md").read_text(encoding="utf-8"))
    print(f"written: {out / 'matrix.md'}, {out / 'matrix.csv'}, {out / 'matrix.png'}")
    return 0


# --- serve ---------------------------------------------------------------------------------------

DEFAULT_MODEL_MINUTES = 2.0


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from rnnlab.serve.app import create_app
        from rnnlab.serve.engine import LoadedModel
        from rnnlab.serve.protocol import server_config
    except ImportError:
        raise RnnlabError("serving needs FastAPI and uvicorn: pip install 'rnnlab[serve]'") from None
    given = overrides_from_args(args).get("serve", {})
    if "api_key" not in given and os.environ.get("RNNLAB_API_KEY"):
        given["api_key"] = os.environ["RNNLAB_API_KEY"]
    config = build_section(ServeConfig, given)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("warning: serving on %s, beyond loopback: anyone who can reach it can use the models%s; "
                    "name the host it is reached as with --allowed-hosts", config.host,
                    "" if config.api_key else " (set --api-key or RNNLAB_API_KEY to require a key)")
    import torch

    torch.set_num_threads(config.threads)  # (the process's setting, so the command sets it, not the app)
    targets = [_name_and_path(item) for item in args.checkpoints] or [("tinyshakespeare", _default_model())]
    models, seen = [], set()
    for name, path in targets:
        loaded = LoadedModel.load(name or "model", path, config.engine_weights)
        if not name:
            loaded.name = loaded.info["name"] = _unique(_model_name(loaded), seen)
        elif name in seen:
            raise ConfigError(f"two models are named {name!r}")
        seen.add(loaded.name)
        models.append(loaded)
    for m in models:
        log.info("serving %s: %s, %s parameters, %s engine", m.name, m.path, f"{m.info['parameters']:,}",
                 m.info["engine"])
    log.info("open http://%s:%d/%s", config.host, config.port, " (API docs at /docs)" if config.docs else "")
    uvicorn.Server(server_config(create_app(models, config), config)).run()
    return 0


def _name_and_path(item: str) -> tuple[str | None, str]:
    name, sep, path = item.partition("=")
    return (name, path) if sep and name and not Path(item).exists() else (None, item)


def _model_name(loaded) -> str:
    """A model's name from its training corpus (a checkpoint's metrics: untrusted), in plain characters."""
    corpus = str(loaded.info.get("corpus") or "model")
    return re.sub(r"[^\w.-]+", "-", Path(corpus.split(" ")[0]).stem).strip("-")[:64] or "model"


def _unique(name: str, seen: set) -> str:
    candidate, number = name, 2
    while candidate in seen:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def _default_model() -> Path:
    """A small LSTM trained on the embedded corpus, trained once (about two minutes) and cached."""
    import os

    from rnnlab.training.loop import train

    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnnlab" / "default-model"
    if (folder / "best.json").is_file():
        return folder
    log.info("no checkpoint given: training a small model on the embedded corpus for %.0f minutes (once; "
             "cached in %s)", DEFAULT_MODEL_MINUTES, folder)
    config = build_run_config(None, {"model": {"hidden_size": 256}, "train": {
        "max_minutes": DEFAULT_MODEL_MINUTES, "checkpoint_dir": str(folder), "eval_every": 250, "keep_last": 1,
        "overwrite": True}})  # (a first attempt that was stopped before its first checkpoint is started over)
    train(config, progress_bar=False)
    return folder


# --- export --------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from rnnlab.export import export_onnx

    graph, meta = export_onnx(args.checkpoint, args.out)
    print(f"written: {graph} and {meta}")
    return 0


# --- inspect -------------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    from rnnlab.training.checkpoint import load_checkpoint

    config = build_section(InspectConfig, overrides_from_args(args).get("inspect", {}))
    facts = load_checkpoint(args.checkpoint).summary()
    if config.json:
        print(json.dumps(facts))
        return 0
    unit = "char" if facts["tokenizer"] == "char" else "token"
    lines = [
        f"checkpoint: {facts['path']} (format {facts['format_version']}, checksum "
        f"{'verified' if facts['checksum_verified'] else 'absent: an older format'})",
        f"model: {facts['layers']}x{facts['hidden_size']} {facts['cell']}, embedding {facts['embedding_size'] or 'one-hot'}, "
        f"{facts['head']} head{', tied' if facts['tie_weights'] else ''}; {facts['parameters']:,} parameters "
        f"({facts['weights_dtype']} weights; trained with precision {facts['training_precision']})",
        f"vocabulary: {facts['vocab_size']:,} ({facts['tokenizer']})",
        f"trained: step {facts['step']}, epoch {_shown(facts['epoch'], '.2f')} on {facts['corpus']} "
        f"(digest {facts['corpus_digest']})",
        f"val loss: {_shown(facts['val_loss'], '.4f')} nats/{unit} ({_shown(facts['val_bits_per_char'], '.4f')} bits/char); "
        f"best {_shown(facts['best_val_loss'], '.4f')}",
        f"resumable: {'yes' if facts['resumable'] else 'no (weights only: use it with --init-from)'}"]
    print("\n".join(lines))
    return 0


def _shown(value, spec: str) -> str:
    return "?" if value is None else format(value, spec)


# --- novelty -------------------------------------------------------------------------------------

def cmd_novelty(args) -> int:
    from rnnlab.data.corpus import default_cache_root
    from rnnlab.novelty import build_index, novelty

    config = build_section(NoveltyConfig, overrides_from_args(args).get("novelty", {}))
    text_path = resolve_text_path(args.train_text)
    sample, words = _sample_to_check(args.source, config)
    index = build_index(text_path, Path(config.cache_dir) if config.cache_dir else default_cache_root(text_path))
    report = novelty(index, sample, config.sizes(), words=words, passages=config.passages)
    if config.json:
        print(json.dumps(report.as_dict()))
        return 0
    unit = report.unit
    print(f"sample: {report.characters:,} characters; longest span found verbatim in {text_path}: "
          f"{len(report.longest)} characters")
    for n, share in report.shares.items():
        print(f"{n}-{unit[:-1]} n-grams found in the training text: {share:.1%}")
    for i, passage in enumerate(report.passages, 1):
        print(f"--- copied passage {i} ({len(passage)} characters) ---\n{passage}")
    return 0


def _sample_to_check(source: str, config) -> tuple[str, bool]:
    """The text to check, and whether it is read in words: a checkpoint's seeded sample, or a file."""
    from rnnlab.training.checkpoint import load_checkpoint

    path = Path(source)
    if path.is_dir() or path.suffix == ".safetensors":
        ckpt = load_checkpoint(path, weights_only=True)
        settings = sample_config_for(ckpt.config.train, {"length": config.length, "seed": config.seed})
        prompt = prompt_ids(ckpt.vocab, "")
        text = complete_texts(make_stepper(ckpt.build_model("cpu"), settings), ckpt.vocab, prompt, settings)[0]
        return text, ckpt.vocab.kind == "word"
    return "".join(read_text_chunks(resolve_text_path(source))), False


# --- plot ----------------------------------------------------------------------------------------

def cmd_plot(args) -> int:
    config = build_section(PlotConfig, overrides_from_args(args).get("plot", {}))
    try:
        import matplotlib  # noqa: F401

        from rnnlab.plots import plot_runs
    except ImportError:
        raise RnnlabError("plots need matplotlib: pip install 'rnnlab[experiments]'") from None
    drawn = plot_runs([Path(r) for r in args.runs], Path(config.out), config.x, config.unit)
    print(f"written: {drawn['file']} ({len(drawn['runs'])} runs; {drawn['ylabel']} against {drawn['xlabel']})")
    return 0


# --- prepare -------------------------------------------------------------------------------------

def cmd_prepare(args) -> int:
    overrides = overrides_from_args(args).get("data", {})
    data = build_section(DataConfig, {**overrides, "path": args.data})
    for message in unused_settings(RunConfig(data=data), {"data": overrides}):
        log.warning("warning: %s", message)
    corpus = prepare_from_config(data)
    splits = corpus.splits(data.val_frac, data.test_frac)
    meta = corpus.meta
    kind = corpus.vocab.kind
    unit = {"char": "characters", "word": "words", "bpe": "BPE tokens"}[kind]
    sizes = f"train {len(splits.train):,} / val {len(splits.val):,} / test {len(splits.test):,}"
    if meta.get("split_fractions"):
        sizes += " (cut at line breaks; the vocabulary is learned from train)"
    elif meta.get("split_tokens"):
        sizes += " (the files' own split)"
    print(f"source: {meta['source']}\ncharacters: {meta.get('characters', meta['tokens']):,}\n"
          f"tokens: {meta['tokens']:,} ({kind})\nvocabulary: {meta['vocab_size']:,} {unit} ({meta['dtype']} ids)\n"
          f"splits: {sizes}\n"
          f"cache: {Path(corpus.tokens.filename).parent}")
    return 0


# --- logging -------------------------------------------------------------------------------------

class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging(quiet: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
