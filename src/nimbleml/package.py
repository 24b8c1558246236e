"""The .nimble package: a folder with manifest.json, the optimised model, and the baseline
it falls back to. Checksums are verified on load; see docs/package-format.md."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, FallbackWarning, ModelLoadError, PackageError, storage_error, warn
from .inputs import Feeds, TensorSpec
from .models.base import Model

SCHEMA = 1
MANIFEST = "manifest.json"
_MODEL_SUFFIXES = (".onnx", ".xml", ".skops", ".pt", ".pth", ".ts", ".pt2", ".pkl", ".joblib")
# the runtime that runs a model of each framework (manifest runtime.engine)
ENGINES = {"onnx": "onnxruntime", "openvino": "openvino"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _placeholder(specs: list[TensorSpec]) -> Feeds:
    """One all-zeros row per input (symbolic dims -> 1 for batch, 8 otherwise)."""
    feeds = {}
    for s in specs:
        shape = [
            1 if i == 0 else (d if isinstance(d, int) and d > 0 else 8)
            for i, d in enumerate(s.shape)
        ]
        if s.dtype == "object":  # string inputs (texts, table columns)
            feeds[s.name] = np.full(shape, "", dtype=object)
            continue
        dtype = np.float32 if s.dtype in ("float16", "bfloat16") else s.dtype
        arr = np.zeros(shape, dtype=dtype)
        if "mask" in s.name.lower():
            arr[...] = 1
        feeds[s.name] = arr
    return feeds


def _open_model(path: Path, manifest: dict[str, Any]) -> Model:
    suffix = path.suffix
    runtime = manifest.get("runtime", {})
    if suffix == ".onnx":
        from .models.onnx_model import OnnxModel

        model: Model = OnnxModel(path, threads=runtime.get("intra_op_num_threads"))
    elif suffix == ".xml":  # OpenVINO IR (model.xml + model.bin); needs the openvino extra
        from .models.openvino_model import OpenVinoModel

        model = OpenVinoModel(path, threads=runtime.get("intra_op_num_threads"))
    elif suffix == ".skops":
        from .models.sklearn_model import load_skops

        # types the package's author trusted when writing it (write_package records them)
        entries = [manifest.get(role) or {} for role in ("model", "baseline")]
        trusted = [
            t for e in entries if e.get("path") == path.name for t in e.get("trusted_types", [])
        ]
        model = load_skops(path, trusted=trusted)
    elif suffix == ".ts":
        from ._deps import require
        from .models.torch_model import TorchModel, quiet

        torch = require("torch", "this package's TorchScript model")
        specs = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
        with quiet():
            module = torch.jit.load(str(path), map_location="cpu")
        example = _placeholder(specs)
        call = manifest.get("call", "positional")
        model = TorchModel(
            module,
            example if call == "kwargs" else tuple(example.values()),
            input_names=[s.name for s in specs],
        )
    else:
        raise PackageError(f"{path.name}: unknown model file type '{suffix}'")
    model.task = manifest.get("source", {}).get("task")
    return model


def read_manifest(directory: Path, verify: Any = None) -> dict[str, Any]:
    """The manifest of the package in ``directory``, checked against the schema, with every
    file it lists present and unchanged; PackageError naming what is wrong. Opens no model:
    ``nimbleml serve`` checks its packages this way before it says it is serving.

    ``verify``: an Ed25519 public key (PEM path, PEM bytes or key object); the package must
    then carry a valid signature by it over the manifest bytes read here, once (see
    signing.py), and hold no file its manifest does not list."""
    path = directory / MANIFEST
    if not path.is_file():
        raise PackageError(f"{directory} is not a .nimble package: no {MANIFEST}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}") from exc
    if verify is not None:  # before parsing: nothing unsigned is interpreted
        from .signature import check_signature

        check_signature(directory, raw, verify)
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise PackageError(f"{path} is not valid JSON ({exc}); the package is damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise PackageError(
            f"{path}: manifest schema {found!r} is not {SCHEMA}; upgrade nimbleml to read it"
        )
    check_manifest(manifest, str(path))
    listed = {entry["path"] for entry in manifest["files"]}
    for role in ("model", "baseline"):
        for name in [manifest[role]["path"], *manifest[role].get("files", [])]:
            if name not in listed:
                raise PackageError(
                    f"{directory.name}: the {role} file '{name}' is not among the files the "
                    "manifest checksums; the package is damaged or crafted"
                )
    for entry in manifest["files"]:
        file = _inside(directory, entry["path"])
        if not file.is_file():
            raise PackageError(f"{directory.name}: file '{entry['path']}' is missing")
        if sha256(file) != entry["sha256"]:
            raise PackageError(
                f"{directory.name}: file '{entry['path']}' was altered (its sha256 does "
                "not match the manifest); rebuild the package"
            )
    if verify is not None:
        from .signature import check_complete

        check_complete(directory, manifest)
    return manifest


def _inside(directory: Path, relative: str) -> Path:
    """``directory / relative``, or PackageError when that is not a file of the package: an
    absolute path, ``..``, or a symlink out. The checksums sit in the same manifest, so they
    prove nothing against a crafted package that points at a file elsewhere."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or not relative.strip():
        raise PackageError(
            f"{directory.name}: manifest entry '{relative}' points outside the package; every "
            "file must be a relative path inside the package folder"
        )
    path = directory / candidate
    if not path.resolve().is_relative_to(directory.resolve()):
        raise PackageError(
            f"{directory.name}: '{relative}' leads outside the package (a symbolic link?); "
            "every file must be inside the package folder"
        )
    return path


class Package:
    """A compressed model with its proof (manifest) and its fallback (baseline)."""

    def __init__(self, directory: str | Path, verify: Any = None) -> None:
        self.directory = Path(directory)
        self._tmp: Any = None  # removes an unsaved package's temporary folder
        self.manifest: dict[str, Any] = read_manifest(self.directory, verify=verify)
        self.fallback_reason: str | None = None
        self.baseline = self._open("baseline")
        try:
            self.model = self._open("model")
            self.model.run(_placeholder(self.model.inputs))
        except Exception as exc:  # whatever stops it running here, the baseline serves
            self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            warn(
                f"the optimised model of {self.directory.name} cannot run here "
                f"({self.fallback_reason}); using its baseline",
                FallbackWarning,
            )
            self.model = self.baseline

    def _open(self, role: str) -> Model:
        entry = self.manifest.get(role)
        if not entry or "path" not in entry:
            raise PackageError(f"{self.directory}/{MANIFEST} has no '{role}' entry")
        try:
            return _open_model(_inside(self.directory, entry["path"]), self.manifest)
        except ModelLoadError as exc:
            if role == "baseline":
                raise PackageError(f"{self.directory.name}: cannot load baseline: {exc}") from exc
            raise

    # -- use ---------------------------------------------------------------------------
    @property
    def using_baseline(self) -> bool:
        return self.model is self.baseline or self.manifest.get("fallback") is not None

    @property
    def name(self) -> str:
        """What to call the model (monitor records, bench labels): the folder's name without
        .nimble once saved; before that (a temporary 'nimble-…' folder), the file or class it
        was made from ('model' for model.onnx, 'Pipeline' for a scikit-learn Pipeline)."""
        if self._tmp is None:
            return self.directory.name.removesuffix(".nimble")
        made_from = str(self.manifest.get("source", {}).get("object") or "")
        path = Path(made_from)
        if "/" in made_from or "\\" in made_from or path.suffix in _MODEL_SUFFIXES:
            return path.stem or "model"
        return made_from.rsplit(".", 1)[-1] or "model"

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.model.inputs

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        """Every output, by name."""
        model = self.model
        return dict(zip(model.output_names, model.run(model.feeds(inputs)), strict=True))

    def predict(self, inputs: Any) -> np.ndarray:
        """The first output: labels for scikit-learn classifiers, values or logits otherwise."""
        model = self.model
        return model.run(model.feeds(inputs))[0]

    def size_bytes(self) -> int:
        """Bytes of the model's files (an OpenVINO IR's .xml and .bin together)."""
        entry = self.manifest["model"]
        files = entry.get("files") or [entry["path"]]
        return sum(int((self.directory / f).stat().st_size) for f in files)

    def num_parameters(self) -> int:
        return int(self.manifest["model"].get("num_parameters") or self.model.num_parameters())

    def save(self, path: str | Path) -> Path:
        """Copy the package to ``path`` (a folder, conventionally ending in .nimble): into a
        folder beside it first, renamed into place once whole, so a full or read-only disk
        (a StorageError naming ``path``) leaves no half-copied package, nor a temp folder,
        and an older package there stays as it was."""
        target = Path(path)
        if target.resolve() == self.directory.resolve():
            return target
        if target.exists() and not (target / MANIFEST).is_file():
            raise PackageError(f"{target} exists and is not a .nimble package; choose a new path")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.directory, tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(target, exc) from exc  # copytree's shutil.Error says 'No space'
        self.directory = target
        if self._tmp is not None:  # an unsaved package's temporary folder is no longer needed
            self._tmp()
            self._tmp = None
        return target

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Package({self.directory.name}: {m['source'].get('framework')} -> "
            f"{'+'.join(s['step'] for s in m['recipe']) or 'baseline'}, fallback={m.get('fallback') is not None})"
        )


def load(path: str | Path, verify: Any = None) -> Package:
    """Open a .nimble package: checksums verified, fallback to the baseline if needed.

    ``verify``: the signer's Ed25519 public key (a ``.pub.pem`` path, PEM bytes or a key
    object). The package must then be signed by that key (``nimbleml sign``) and unchanged
    since, or PackageError says what is wrong, before any model file is opened. Without it
    a signature is not looked at."""
    return Package(path, verify=verify)


def model_map(items: Any) -> dict[str, str]:
    """{name: path} from NAME=PATH strings, plain paths (named after the folder) or a map:
    how ``nimbleml serve`` and ``nimbleml deploy`` name the packages they are given."""
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    models: dict[str, str] = {}
    for item in items or []:
        item = str(item)
        name, _, path = item.partition("=") if "=" in item else ("", "", item)
        name = name or Path(path).name.removesuffix(".nimble")
        if name in models:
            raise ConfigError(f"two packages are named '{name}'; use NAME=PATH to tell them apart")
        models[name] = path
    return models


def engine_of(model: Model) -> str:
    """What runs ``model``: onnxruntime, openvino, torch, sklearn..."""
    return ENGINES.get(model.framework, model.framework)


def write_package(manifest: dict[str, Any], model: Model, baseline: Model, same: bool) -> Package:
    """Write models + manifest into a temporary folder and open it as a Package.

    Every file a model's ``save`` writes is listed with its checksum (an OpenVINO IR's
    ``.bin`` beside its ``.xml``), so loading and signatures cover all of them;
    ``runtime.engine`` says what runs the model (``runtime.why`` is the writer's to give)."""
    directory = Path(tempfile.mkdtemp(prefix="nimble-", suffix=".nimble"))
    baseline_file, baseline_files = _save(baseline, directory, "baseline")
    model_file, model_files = (
        (baseline_file, baseline_files) if same else _save(model, directory, "model")
    )
    for role, path, files, m in (
        ("model", model_file, model_files, model),
        ("baseline", baseline_file, baseline_files, baseline),
    ):
        manifest[role] = {
            "path": path,
            "size_bytes": sum((directory / f).stat().st_size for f in files),
            "num_parameters": m.num_parameters(),
        }
        if files != [path]:
            manifest[role]["files"] = files
    for entry in (manifest["model"], manifest["baseline"]):
        if entry["path"].endswith(".skops"):
            entry["trusted_types"] = _custom_types(directory / entry["path"])
    runtime = manifest.setdefault("runtime", {})
    runtime["engine"] = engine_of(baseline if same else model)
    names = sorted({*model_files, *baseline_files})
    manifest["files"] = [{"path": n, "sha256": sha256(directory / n)} for n in names]
    text = json.dumps(manifest, indent=2, default=_json_default)
    try:
        check_manifest(json.loads(text), "the manifest nimbleml was about to write")
    except PackageError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    (directory / MANIFEST).write_text(text)
    pkg = Package(directory)
    pkg._tmp = weakref.finalize(pkg, shutil.rmtree, directory, ignore_errors=True)
    return pkg


def _save(model: Model, directory: Path, stem: str) -> tuple[str, list[str]]:
    """(the file ``model.save`` names, every file it wrote), relative to ``directory``."""
    before = {p for p in directory.rglob("*") if p.is_file()}
    name = model.save(directory, stem)
    written = {p for p in directory.rglob("*") if p.is_file()} - before
    files = sorted({name, *(p.relative_to(directory).as_posix() for p in written)})
    return name, [name, *(f for f in files if f != name)]


def _custom_types(path: Path) -> list[str]:
    """Types in a skops file beyond scikit-learn/numpy/scipy (a custom transformer, say).

    The model being packaged is in memory, so whoever packages it already runs its code;
    recording its types lets the package load them again without ``trusted_types=``."""
    from skops.io import get_untrusted_types

    from .models.sklearn_model import SAFE_PREFIXES

    return sorted(t for t in get_untrusted_types(file=path) if not t.startswith(SAFE_PREFIXES))


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads((Path(__file__).parent / "manifest.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def check_manifest(manifest: Any, where: str) -> None:
    """PackageError naming the first place ``manifest`` departs from manifest.schema.json:
    one schema for every writer (compress, optimize) and every reader (load, inspect)."""
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        at = "/".join(str(part) for part in first.path) or "(top level)"
        raise PackageError(
            f"{where} does not follow the package format at '{at}': {first.message[:300]}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
