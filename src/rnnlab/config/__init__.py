"""The one source of hyperparameters: typed dataclasses, TOML presets and CLI overrides.

Every CLI flag of every subcommand is derived from a config dataclass field (its name with dashes,
its type, its help text and its choices), so adding a setting means adding one field.
Values are merged in this order: dataclass defaults < TOML file < command-line flags.

fields.py: how a setting is declared and read (setting, flags, TOML, checks);
run.py: the run's tree (RunConfig: data, model, train) and the paper's presets;
commands.py: sampling, evaluation, serving and the schemes experiment.
"""

from rnnlab.config.commands import (
    EvalConfig,
    GridExperimentConfig,
    InspectConfig,
    MatrixConfig,
    NoveltyConfig,
    PlotConfig,
    SampleConfig,
    SchemesExperimentConfig,
    ServeConfig,
    SweepConfig,
    parse_architectures,
)
from rnnlab.config.fields import (
    add_flags,
    build_section,
    load_toml,
    marked,
    merge,
    overrides_from_args,
    setting,
    unused_section_settings,
)
from rnnlab.config.run import (
    PAPER_ARCHITECTURE,
    SCHEMES,
    WINDOWED_SCHEMES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    build_run_config,
    scheme_settings,
    sections,
    unused_settings,
)

__all__ = ["PAPER_ARCHITECTURE", "SCHEMES", "WINDOWED_SCHEMES", "DataConfig", "EvalConfig", "GridExperimentConfig", "InspectConfig", "MatrixConfig", "NoveltyConfig", "PlotConfig", "ModelConfig",
           "RunConfig", "SampleConfig", "SchemesExperimentConfig", "ServeConfig", "SweepConfig", "TrainConfig", "add_flags",
           "build_run_config", "build_section", "load_toml", "marked", "merge", "overrides_from_args",
           "parse_architectures", "scheme_settings", "sections", "setting", "unused_section_settings",
           "unused_settings"]
