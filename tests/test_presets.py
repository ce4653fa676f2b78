from pathlib import Path

import pytest

from rnnlab.config import RunConfig, build_run_config

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_there_are_presets():
    assert len(PRESETS) >= 3


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_is_valid(preset):
    assert isinstance(build_run_config(str(preset), {}), RunConfig)


def test_default_preset_matches_the_built_in_defaults():
    preset = build_run_config(str(Path(__file__).parent.parent / "configs" / "char_shakespeare_lstm.toml"), {})
    assert preset == RunConfig()
