"""The installed package from outside the repo: `tinyllm` and `tinyllm-playground` run from a temporary
directory, and every project module they import comes from this repo (no other package of the same
name, such as Hugging Face's `kernels`, can stand in for one of ours).

Each script runs unchanged in a subprocess; a `sitecustomize` module put on PYTHONPATH (a folder that is
not the repo) records, at exit, the file of every module imported.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGE = "tiny_llm_playground"
PRODUCT_FOLDERS = ("app", "engine", "kernels", "rag", "viz")

RECORDER = """
import atexit, json, os, sys

def _dump():
    files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())}
    with open(os.environ["MODULE_REPORT"], "w") as f:
        json.dump(files, f)

atexit.register(_dump)
"""


def run_script(tmp_path: Path, args: list[str], **popen) -> tuple[subprocess.Popen, Path]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(RECORDER)
    report = tmp_path / f"modules-{args[0]}.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONPATH": str(hook), "MODULE_REPORT": str(report), "GRADIO_ANALYTICS_ENABLED": "False"}
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    # Ctrl+C as a terminal sends it: a test run started in the background inherits SIGINT ignored, and so
    # would the script (Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen(
        [str(BIN / args[0]), *args[1:]], cwd=work, env=env, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen,
    )  # fmt: skip
    return proc, report


def check_modules(report: Path, must_have: set[str]) -> dict[str, str]:
    """Every imported project module's file lies in the repo; the named ones were imported."""
    modules = json.loads(report.read_text())
    ours = {n: f for n, f in modules.items() if n == PACKAGE or n.startswith(PACKAGE + ".")}
    assert must_have <= set(ours), f"not imported: {sorted(must_have - set(ours))}"
    outside = {n: f for n, f in ours.items() if f is not None and not Path(f).resolve().is_relative_to(ROOT)}
    assert not outside, f"project modules loaded from outside the repo: {outside}"
    # A top-level module named like one of our folders is someone else's (ours import as tiny_llm_playground.*)
    for name in PRODUCT_FOLDERS:
        f = modules.get(name)
        assert f is None or not Path(f).resolve().is_relative_to(ROOT), f"{name} imported as a top-level module"
    return ours


def test_tinyllm_runs_from_any_directory(tmp_path, tiny_model_dir):
    proc, report = run_script(tmp_path, ["tinyllm", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "kernel backends:" in out and "cpu" in out
    check_modules(report, {f"{PACKAGE}.engine.cli", f"{PACKAGE}.kernels.registry", f"{PACKAGE}.kernels.cpu"})

    args = ["tinyllm", "generate", "--model", str(tiny_model_dir), "--prompt", "hi", "--max-tokens", "4", "--json"]
    proc, report = run_script(tmp_path, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["generated_tokens"] >= 1 and result["prompt_tokens"] >= 1
    ours = check_modules(report, {f"{PACKAGE}.engine.serve.engine_core", f"{PACKAGE}.engine.models.qwen2"})
    if any(n.endswith("kernels.cpu._ext") for n in ours):
        assert Path(ours[f"{PACKAGE}.kernels.cpu._ext"]).resolve().parent == ROOT / "kernels" / "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tinyllm_playground_serves_from_any_directory(tmp_path, tiny_model_dir):
    port = _free_port()
    args = ["tinyllm-playground", "--port", str(port), "--model", str(tiny_model_dir)]
    proc, report = run_script(tmp_path, args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, page = time.monotonic() + 240, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert "Tiny LLM Playground" in page
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C: a clean exit, so the recorder writes its report
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the playground was still running 60 s after Ctrl+C")
    assert proc.returncode == 0, proc.stdout.read()
    check_modules(report, {f"{PACKAGE}.app.cli", f"{PACKAGE}.app.main", f"{PACKAGE}.engine.serve.engine"})


def test_python_dash_m_still_works_from_the_repo_root():
    for module in ("engine", "app"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert ("tinyllm" if module == "engine" else "tinyllm-playground") in proc.stdout


def test_every_package_folder_is_installed():
    """pyproject lists the packages by hand (its folders map onto one namespace): none may be missing."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        PACKAGE + "." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in PRODUCT_FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk == listed, f"missing: {sorted(on_disk - listed)}, stale: {sorted(listed - on_disk)}"
    assert config["package-dir"] == {f"{PACKAGE}.{f}": f for f in PRODUCT_FOLDERS}


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if "No module named pip" in proc.stderr:
        pytest.skip("this interpreter has no pip")
    assert proc.returncode == 0, proc.stdout + proc.stderr
