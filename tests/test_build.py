"""The optional build of the compiled sampling step (setup.py): CI requires it; an install without a
compiler, or without OpenMP, still succeeds."""

import pytest

from rnnlab.models import fast_engine


def test_ci_builds_the_compiled_step():
    """.ci/run sets RNNLAB_REQUIRE_COMPILED_STEP: there tests/test_fast_engine.py must run, not skip."""
    import os

    if os.environ.get("RNNLAB_REQUIRE_COMPILED_STEP") and not fast_engine.available():
        pytest.fail("the compiled step was not built (is a C compiler installed?)")


@pytest.mark.parametrize("compiler", ["none", "no-openmp"])
def test_the_install_builds_without_openmp_and_succeeds_without_a_compiler(tmp_path, compiler):
    """setup.py's optional build: no compiler -> a warning and no extension (sampling uses the NumPy engine);
    a compiler without OpenMP -> the extension, single-threaded."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    gcc = shutil.which("gcc") or shutil.which("cc")
    if compiler == "no-openmp" and gcc is None:
        pytest.skip("no C compiler here")
    wrapper = tmp_path / "cc"
    refuse = '[ "$a" = -fopenmp ] && exit 1' if compiler == "no-openmp" else "exit 1"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do {refuse}; done\nexec {gcc} "$@"\n')
    wrapper.chmod(0o755)
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                             "--build-temp", str(tmp_path / "tmp")], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "CC": str(wrapper), "LDSHARED": f"{wrapper} -shared"}, timeout=300)
    assert result.returncode == 0, result.stderr
    built = list((tmp_path / "lib").rglob("_fast_step*.so"))
    if compiler == "none":
        assert not built and "sampling will use the NumPy engine" in result.stderr
        return
    assert len(built) == 1 and "without OpenMP" in result.stderr
    spec = importlib.util.spec_from_file_location("_fast_step", built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.openmp() is False and module.isa() == fast_engine.cpu_kernels()
