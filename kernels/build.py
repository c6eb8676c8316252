"""Build the CPU kernels extension: `python -m tiny_llm_playground.kernels.build` (`python -m kernels.build` from
the repo root).

Configures and builds kernels/cpu/CMakeLists.txt with cmake, leaving the module at
kernels/cpu/_ext*.so (importable as `tiny_llm_playground.kernels.cpu._ext`). Rules it keeps:

- Uses the running interpreter's nanobind (`python -m nanobind --cmake_dir`) and mlx
  (`mlx/share/cmake/MLX`), so the module matches the mlx it will be loaded into.
- nanobind must be the version mlx was built with (3.1.0 for mlx 0.32): other versions build
  but fail when an mlx array crosses the boundary, so this refuses them up front.
- Portable: no -march flags; SIMD paths are chosen at run time.
- On any failure it prints what went wrong and how to fix it, and exits nonzero.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

CPU_DIR = Path(__file__).resolve().parent / "cpu"
BUILD_DIR = CPU_DIR / "build"
REQUIRED_NANOBIND = "3.1.0"


class BuildError(RuntimeError):
    """A build step failed; the message says which and what to do."""


def _run(cmd: list[str], *, cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd)
    if proc.returncode != 0:
        raise BuildError(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")


def _nanobind_cmake_dir() -> str:
    try:
        import nanobind
    except ImportError as e:
        raise BuildError(
            f"nanobind is not installed; run `{sys.executable} -m pip install nanobind=={REQUIRED_NANOBIND}`"
        ) from e
    version = getattr(nanobind, "__version__", "?")
    if version != REQUIRED_NANOBIND:
        raise BuildError(
            f"nanobind {version} found, mlx needs {REQUIRED_NANOBIND} (other versions build but fail at "
            f"call time); run `{sys.executable} -m pip install nanobind=={REQUIRED_NANOBIND}`"
        )
    return nanobind.cmake_dir()


def _mlx_cmake_dir() -> str:
    try:
        import mlx
    except ImportError as e:
        raise BuildError("mlx is not installed in this interpreter") from e
    path = Path(mlx.__path__[0]) / "share" / "cmake" / "MLX"
    if not (path / "MLXConfig.cmake").exists():
        raise BuildError(f"mlx ships no CMake config at {path}; reinstall mlx (pip install 'mlx[cpu]')")
    return str(path)


def build(*, clean: bool = False, jobs: int | None = None, build_type: str = "Release") -> Path:
    """Configure and build the extension; return the path of the built module."""
    if shutil.which("cmake") is None:
        raise BuildError("cmake not found on PATH; install cmake >= 3.24 (pip install cmake)")
    if clean and BUILD_DIR.exists():
        shutil.rmtree(BUILD_DIR)
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    for old in glob.glob(str(CPU_DIR / "_ext*.so")) + glob.glob(str(CPU_DIR / "_ext*.pyd")):
        os.remove(old)  # never leave a stale module behind if the build fails
    _run(
        [
            "cmake",
            "-S",
            str(CPU_DIR),
            "-B",
            str(BUILD_DIR),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dnanobind_ROOT={_nanobind_cmake_dir()}",
            f"-DMLX_ROOT={_mlx_cmake_dir()}",
        ]
    )
    _run(["cmake", "--build", str(BUILD_DIR), "--config", build_type, f"-j{jobs or os.cpu_count() or 1}"])
    built = sorted(glob.glob(str(CPU_DIR / "_ext*.so")) + glob.glob(str(CPU_DIR / "_ext*.pyd")))
    if not built:
        raise BuildError(f"build finished but no _ext module appeared in {CPU_DIR}")
    return Path(built[0])


def _check_import() -> str:
    """Import the fresh module in a child process (this one may hold an older copy)."""
    code = (
        "import mlx.core as mx; from tiny_llm_playground.kernels.cpu import _ext; "
        "y = _ext.linear(mx.ones((2, 3)), mx.ones((4, 3))); mx.eval(y); "
        "assert y.shape == (2, 4) and float(y.sum()) == 24.0, y; "
        "print(_ext.cpu_isa(), _ext.num_threads())"
    )
    root = CPU_DIR.parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"built module failed its smoke test:\n{proc.stderr.strip()}")
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="delete kernels/cpu/build first")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs")
    parser.add_argument("--debug", action="store_true", help="build with debug info, no optimisation")
    args = parser.parse_args(argv)
    try:
        path = build(clean=args.clean, jobs=args.jobs, build_type="Debug" if args.debug else "Release")
        isa, threads = _check_import().split()
    except BuildError as e:
        print(f"\nkernels.build: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"\nkernels.build: built {path} (dispatching to {isa}, {threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
