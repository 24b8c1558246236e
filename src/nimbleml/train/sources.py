"""Where a training run's model and data come from when they are named by text (the command
line, a YAML file): ``module:function`` imported from the current folder or the installed
packages, a torchvision architecture, an ``.npz`` / ``.csv`` file, an image folder, or a
``module:function`` that returns a Dataset. Each wrong name is one ConfigError / DataError
that says what was looked for and what is there."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError, DataError, running_user_code

DATA_FORMATS = ".npz (X and y), .csv with --target COLUMN, an image folder, or module:function"


def is_reference(text: str) -> bool:
    """True for ``module:function`` / ``file.py:function`` (not a path that exists)."""
    if os.path.exists(text) or ":" not in text:
        return False
    module, _, name = text.rpartition(":")
    return bool(module) and name.isidentifier()


def import_object(text: str, flag: str) -> Any:
    """The object ``module:function`` (or ``path/file.py:function``) names. The current folder
    comes first on sys.path, as for ``python -m``."""
    if not is_reference(text):
        raise ConfigError(
            f"{flag} {text!r}: give module:function (e.g. mypkg.models:build) or "
            "path/to/file.py:function"
        )
    module_name, _, name = text.rpartition(":")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    importlib.invalidate_caches()  # a file written since start-up (a test's, a notebook's)
    try:
        if module_name.endswith(".py"):
            module = _from_file(Path(module_name), flag, text)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"{flag} {text!r}: no module named {module_name!r} in {here} or the installed "
                "packages"
            ) from None
        raise ConfigError(f"{flag} {text!r}: importing {module_name} failed: {exc}") from None
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{flag} {text!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, name):
        there = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )  # fmt: skip
        raise ConfigError(
            f"{flag} {text!r}: {module_name} has no {name!r}; its functions: "
            f"{', '.join(there) or '(none)'}"
        )
    return getattr(module, name)


def find(text: str, flag: str) -> None:
    """ConfigError unless ``module:function``'s module (or file) can be found, without
    importing it: a parent process that starts others checks names, and the module (with
    torch, seconds to import) is imported where it runs."""
    if not is_reference(text):
        import_object(text, flag)  # the error for text that is not module:function
    module_name = text.rpartition(":")[0]
    if module_name.endswith(".py"):
        if not Path(module_name).is_file():
            raise ConfigError(f"{flag} {text!r}: file {module_name} not found")
        return
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    importlib.invalidate_caches()
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ConfigError(
            f"{flag} {text!r}: no module named {module_name!r} in {here} or the installed packages"
        )


def _from_file(path: Path, flag: str, text: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{flag} {text!r}: file {path} not found")
    name = f"_nimbleml_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ConfigError(f"{flag} {text!r}: {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _call(fn: Any, kwargs: dict[str, Any], text: str, flag: str) -> Any:
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{flag} {text!r} cannot take {', '.join(kwargs) or 'no arguments'} ({exc})"
        ) from None
    except ValueError:  # a builtin without a signature: just call it
        pass
    what = "the model" if flag in ("--model", "--arch") else "the data"
    with running_user_code(f"the {flag} function {text!r}",
                           f"that it builds {what} with these arguments ({', '.join(kwargs) or 'none'})"):  # fmt: skip
        return fn(**kwargs)


def build_model(factory: str | None, arch: str | None = None, num_classes: int | None = None,
                kwargs: dict[str, Any] | None = None, flag: str = "--model") -> Any:  # fmt: skip
    """The torch.nn.Module that ``factory`` (``module:function``, called with ``kwargs`` and
    ``num_classes=`` when given) or the torchvision architecture ``arch`` builds; errors
    name ``factory`` as ``flag``."""
    torch = require("torch", "nimbleml train")
    args = dict(kwargs or {})
    if factory and arch:
        raise ConfigError(f"give --model or --arch, not both (got {factory!r} and {arch!r})")
    if not factory and not arch:
        raise ConfigError(
            "no model: give --model module:function (a function that returns a "
            "torch.nn.Module) or --arch NAME (a torchvision architecture)"
        )
    if arch:
        model = _torchvision(arch, num_classes, args)
        where, flag = arch, "--arch"
    else:
        assert factory is not None
        if num_classes is not None:
            args["num_classes"] = num_classes
        model = _call(import_object(factory, flag), args, factory, flag)
        where = factory
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"{flag} {where!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def check_arch(arch: str) -> Any:
    """torchvision, when it is installed and ``arch`` is one of its classification models."""
    try:
        import torchvision
    except ImportError:
        raise ConfigError(
            f"--arch {arch} needs torchvision, which is not installed: pip install torchvision "
            "(the release that matches your torch), or give --model module:function"
        ) from None
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if arch not in names:
        some = [n for n in names if n.startswith(("resnet", "mobilenet", "efficientnet_b"))]
        raise ConfigError(
            f"--arch {arch!r} is not a torchvision classification model; some that are: "
            f"{', '.join(some)}"
        )
    return torchvision


def _torchvision(arch: str, num_classes: int | None, args: dict[str, Any]) -> Any:
    torchvision = check_arch(arch)
    if num_classes is not None:
        args["num_classes"] = num_classes
    return _call(lambda **kw: torchvision.models.get_model(arch, weights=None, **kw), args,
                 arch, "--arch")  # fmt: skip


def load(path: str, target: str | None = None, image_size: int | None = None,
         flag: str = "--data") -> Any:  # fmt: skip
    """(X, y) arrays from ``.npz`` / ``.csv``, an ImageFolder Dataset from a folder, or what a
    ``module:function`` returns (a Dataset, a DataLoader or (X, y))."""
    if is_reference(path):
        data = _call(import_object(path, flag), {}, path, flag)
        if isinstance(data, tuple | list) and len(data) == 2:
            return tuple(data)
        if not _is_dataset(data):
            raise DataError(
                f"{flag} {path!r} returned a {type(data).__name__}; give a function that "
                "returns a torch Dataset, a DataLoader, or (X, y)"
            )
        return data
    if os.path.isdir(path):
        return _image_folder(path, image_size, flag)
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path} ({flag} takes {DATA_FORMATS})")
    from ..inputs import load_data, refuse_missing
    from .data import MISSING_FIX

    X, y = load_data(path, target)
    if y is None:
        hint = "pass --target COLUMN" if path.lower().endswith(".csv") else "save it with y="
        raise DataError(f"{flag} {path} holds no labels (y) to train on: {hint}")
    refuse_missing(X, f"{flag} {path}", fix=MISSING_FIX)  # once, with the file's name
    refuse_missing(y, f"{flag} {path} (labels)", fix=MISSING_FIX)
    return X, y


def _image_folder(path: str, image_size: int | None, flag: str) -> Any:
    """torchvision's ImageFolder when torchvision is installed, else nimbleml's own (Pillow):
    the same classes, order and tensors."""
    try:
        from torchvision import datasets, transforms
    except ImportError:
        from .images import ImageFolder

        return ImageFolder(path, image_size)
    steps = [transforms.Resize((image_size, image_size))] if image_size else []
    try:
        return datasets.ImageFolder(
            path, transform=transforms.Compose([*steps, transforms.ToTensor()])
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(
            f"{flag} {path}: not an image folder with one sub-folder of images per class ({exc})"
        ) from None


def _is_dataset(data: Any) -> bool:
    from torch.utils.data import DataLoader, Dataset

    return isinstance(data, Dataset | DataLoader)


def rows(data: Any) -> int | None:
    """How many samples ``data`` holds, when that is known without reading it."""
    if isinstance(data, tuple):
        X = data[0]
        first = next(iter(X.values())) if isinstance(X, dict) else X
        return len(first)
    try:
        return len(data.dataset) if hasattr(data, "dataset") else len(data)
    except TypeError:
        return None


def as_arrays(data: Any, flag: str = "--val") -> tuple[Any, Any]:
    """(X, y) numpy arrays from (X, y) or a Dataset of (x, y) pairs or of dicts with a label
    key (Hugging Face-style rows: X is then a dict of arrays, input_ids ...), stacked; for
    --optimize and distillation's report, which verify and time on arrays."""
    import numpy as np

    from .data import TARGET_KEYS, split

    if isinstance(data, tuple):
        return data
    from torch.utils.data import DataLoader

    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)
    xs: list[Any] = []
    ys: list[Any] = []
    for item in loader:
        if isinstance(item, dict) and any(k in item for k in TARGET_KEYS):
            batch = split(item)
            xs.append({k: np.asarray(v) for k, v in batch.inputs.items()})
            ys.append(np.asarray(batch.target))
            continue
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise DataError(
                f"{flag}: --optimize needs (input, label) pairs, or dicts with a 'labels' key, "
                "from the data"
            )
        xs.append(np.asarray(item[0]))
        ys.append(np.asarray(item[1]))
    if xs and isinstance(xs[0], dict):
        return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}, np.concatenate(ys)
    return np.concatenate(xs), np.concatenate(ys)
