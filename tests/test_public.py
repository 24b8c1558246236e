"""The public surface: __all__, import cost, life without torch."""

import inspect
import subprocess
import sys

import nimbleml


def test_all_is_complete_and_importable():
    # nimbleml.train and nimbleml.profile are plain functions (issue 23); nimbleml.students
    # a module of student builders (nimbleml.students.shrink)
    public_modules = {"students"}
    public = {
        n
        for n in dir(nimbleml)
        if not n.startswith("_")
        and (not inspect.ismodule(getattr(nimbleml, n)) or n in public_modules)
    }
    assert inspect.isfunction(nimbleml.train) and inspect.isfunction(nimbleml.profile)
    assert callable(nimbleml.Trainer)
    assert callable(nimbleml.students.shrink) and callable(nimbleml.distill)
    assert public == set(nimbleml.__all__) - {"__version__"}
    for name in nimbleml.__all__:
        assert getattr(nimbleml, name) is not None


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_import_is_fast_and_loads_no_heavy_dependency():
    out = _run(
        "import sys, time; t = time.perf_counter(); import nimbleml; "
        "print(time.perf_counter() - t); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'sklearn', 'matplotlib', 'skl2onnx') "
        "if m in sys.modules))"
    )
    seconds, heavy = out.strip().splitlines()
    assert heavy == "[]"
    assert float(seconds) < 1.5  # numpy dominates; torch alone would take seconds


def test_works_without_torch_and_says_how_to_install_it():
    out = _run(
        "import sys; sys.modules['torch'] = None\n"
        "import nimbleml\n"
        "from nimbleml.models.torch_model import TorchModel\n"
        "try:\n"
        "    TorchModel(object(), None)\n"
        "except nimbleml.MissingDependencyError as e:\n"
        "    print(e)\n"
    )
    assert "pip install torch==2.13.0" in out


def test_error_tree():
    for name in (
        "ConfigError",
        "ModelLoadError",
        "ConversionError",
        "PackageError",
        "BenchmarkError",
    ):
        assert issubclass(getattr(nimbleml, name), nimbleml.NimbleError)
    assert issubclass(nimbleml.ConfigError, ValueError)
    assert issubclass(nimbleml.UntrustedPickleError, nimbleml.ModelLoadError)
