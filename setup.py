"""Build genssd and its compiled kernels, ``genssd_kernels._C``.

The extension holds the ``TORCH_LIBRARY(genssd, ...)`` op schemas (csrc/ops.cpp), the OpenMP
CPU kernels (csrc/cpu) and, where torch was built with CUDA and nvcc is found, the CUDA
kernels (csrc/cuda). It needs torch at build time, so install with
``pip install --no-build-isolation .``. Without torch, or when compilation fails, the
pure-Python package still installs and the ``reference``/``triton`` backends work; one warning
says why. ``GENSSD_REQUIRE_EXT=1`` turns that soft failure into an error.
"""

import glob
import os
import shutil
import sys
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE_EXT = os.environ.get("GENSSD_REQUIRE_EXT", "0") == "1"
EXT_NAME = "genssd_kernels._C"


# pip runs setup.py for metadata (egg_info, dist_info) before the build itself; the warning is
# only given by the run that builds, so an install prints it once.
METADATA_COMMANDS = {"egg_info", "dist_info", "sdist"}


def _fail(reason):
    if REQUIRE_EXT:
        raise RuntimeError(
            f"genssd: the C++ extension could not be built ({reason}) and GENSSD_REQUIRE_EXT=1"
        )
    if METADATA_COMMANDS.isdisjoint(sys.argv[1:]):
        warnings.warn(
            f"genssd: building without the C++ extension ({reason}); the 'cpp' backend will be unavailable",
            stacklevel=2,
        )


def _cuda_available(torch_utils):
    import torch

    if torch.version.cuda is None:
        return False, "torch has no CUDA"
    if (
        torch_utils.CUDA_HOME is None
        or shutil.which("nvcc", path=os.path.join(torch_utils.CUDA_HOME, "bin")) is None
    ):
        return False, "nvcc not found"
    return True, ""


def _extensions():
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        _fail("torch is not importable at build time; use pip install --no-build-isolation")
        return [], {}

    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # torch's own flags: without FP traps and errno, GCC vectorizes the kernels' exp/select loops
    # (IEEE results are unchanged; this is not -ffast-math).
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    with_cuda, why_not = _cuda_available(cpp_extension)
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # sm_90 for Hopper (the GPU machine); a PTX fallback keeps other cards working.
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        ext = cpp_extension.CUDAExtension(
            EXT_NAME,
            sources,
            extra_compile_args={
                "cxx": cxx_flags + ["-DGENSSD_WITH_CUDA"],
                "nvcc": ["-O3", "-DGENSSD_WITH_CUDA"],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        if os.environ.get("GENSSD_VERBOSE_BUILD"):
            print(f"genssd: CPU-only extension ({why_not})", file=sys.stderr)
        ext = cpp_extension.CppExtension(
            EXT_NAME, sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
        )
    return [ext], {"build_ext": _SoftBuildExt.wrap(cpp_extension.BuildExtension)}


class _SoftBuildExt:
    """Wraps torch's BuildExtension so a compile error degrades to a warning."""

    @staticmethod
    def wrap(base):
        class SoftBuildExt(base):
            def run(self):
                try:
                    super().run()
                except Exception as exc:  # noqa: BLE001 - any compiler failure
                    _fail(f"{type(exc).__name__}: {exc}")

            def build_extension(self, ext):
                try:
                    super().build_extension(ext)
                except Exception as exc:  # noqa: BLE001
                    _fail(f"{type(exc).__name__}: {exc}")

        return SoftBuildExt


ext_modules, cmdclass = _extensions()

setup(
    package_dir={"": "python", "genssd_kernels": "genssd_kernels"},
    packages=[
        "genssd",
        "genssd.tasks",
        "genssd.commands",
        "genssd_kernels",
        "genssd_kernels.reference",
        "genssd_kernels.triton",
    ],
    package_data={"genssd": ["assets/**/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass if ext_modules else {"build_ext": build_ext},
)
