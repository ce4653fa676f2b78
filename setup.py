"""The compiled step (rnnlab.models._fast_step) is optional: where no C compiler (or no OpenMP) is
found, the package installs without it, or single-threaded, and sampling uses the NumPy engine."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]


class OptionalBuild(build_ext):
    """Build with OpenMP; retry without it; give up with a warning rather than fail the install."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
            return
        except Exception as error:  # noqa: BLE001 - any compiler failure means "try plainer"
            first = error
        ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP]
        ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP]
        try:
            super().build_extension(ext)
            self.warn(f"built {ext.name} without OpenMP ({first}): the compiled step runs on one thread")
        except Exception as error:  # noqa: BLE001
            self.warn(f"could not build {ext.name} ({error}): sampling will use the NumPy engine")


setup(
    ext_modules=[Extension("rnnlab.models._fast_step", ["src/rnnlab/models/_fast_step.c"],
                           extra_compile_args=["-O3", "-std=c11", *OPENMP], extra_link_args=OPENMP)],
    cmdclass={"build_ext": OptionalBuild},
)
