"""The MONAI bundles and config overlays medseg ships, found where medseg is installed.

In the repository they are the top-level ``bundles/`` and ``configs/`` folders, where users and MONAI's runner
find them. The wheel maps the same folders into the package as ``medseg/bundles`` and ``medseg/configs``
(``[tool.setuptools.package-dir]`` in pyproject.toml), so an installed medseg finds them through
:mod:`importlib.resources` and a clone (an editable install) beside the package. Everything medseg writes goes to
the working directory or to folders the user names, never into these.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

__all__ = [
    "DATA_ROOT_VARIABLE", "bundle_config_files", "bundle_folder", "bundle_names", "bundles_root", "configs_root",
    "data_root", "is_packaged", "overlay_file", "read_bundle_config",
]

# the environment variable naming the folder that holds the datasets (DRIVE/, LES-AV/, CamVid/)
DATA_ROOT_VARIABLE = "MEDSEG_DATA_ROOT"


def _shipped(name: str) -> Path:
    packaged = Path(str(importlib.resources.files("medseg") / name))
    if packaged.is_dir():
        return packaged
    beside = Path(__file__).resolve().parents[1] / name  # a clone: bundles/ and configs/ beside medseg/
    if beside.is_dir():
        return beside
    raise FileNotFoundError(f"medseg is installed without its {name}/ (looked in {packaged} and {beside})")


def bundles_root() -> Path:
    """The folder holding the shipped bundles (``<name>/configs/metadata.json`` each)."""
    return _shipped("bundles")


def configs_root() -> Path:
    """The folder holding the shipped config overlays (``cpu_budget.yaml``, ...)."""
    return _shipped("configs")


def bundle_names() -> list[str]:
    return sorted(path.parents[1].name for path in bundles_root().glob("*/configs/metadata.json"))


def is_packaged(folder: str | Path) -> bool:
    """Whether ``folder`` is inside the installed package (so nothing may be written into it)."""
    package = Path(str(importlib.resources.files("medseg"))).resolve()
    return Path(folder).resolve().is_relative_to(package)


def data_root(bundle_root: str | os.PathLike) -> str:
    """The folder a bundle at ``bundle_root`` finds its datasets in (``DRIVE/``, ``LES-AV/``, ``CamVid/``):
    ``$MEDSEG_DATA_ROOT``; else, for a bundle of a clone, ``shared/data`` beside the repository; else, for a bundle
    installed with medseg, ``data`` in the working directory (nothing is looked for inside the installed package).
    """
    if DATA_ROOT_VARIABLE in os.environ:
        return os.environ[DATA_ROOT_VARIABLE]
    if is_packaged(bundle_root):
        return os.path.join(os.getcwd(), "data")
    return os.path.join(bundle_root, "..", "..", "..", "shared", "data")


def bundle_folder(name_or_path: str | Path) -> Path:
    """A bundle given as a folder (with ``configs/metadata.json``) or by the name of a shipped bundle; a
    ``bundles/NAME`` that is not a folder here is the shipped ``NAME`` (the repository's spelling, from anywhere).

    Raises:
        FileNotFoundError: naming the argument and the shipped bundles.
    """
    path = Path(name_or_path)
    shipped = bundles_root() / (path.name if path.parent in (Path("."), Path("bundles")) else str(path))
    for candidate in (path, shipped):
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"{name_or_path}: not a bundle folder (no configs/metadata.json) nor a shipped bundle "
        f"(shipped: {', '.join(bundle_names()) or 'none'})"
    )


def overlay_file(name_or_path: str | Path) -> Path:
    """A config overlay given as a file, or by the name of a shipped one (``cpu_budget`` or ``cpu_budget.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    shipped = configs_root() / (path.name if path.suffix in (".yaml", ".yml", ".json") else f"{path.name}.yaml")
    if shipped.is_file() and path.parent in (Path("."), Path("configs")):
        return shipped
    names = ", ".join(sorted(p.stem for p in configs_root().glob("*.yaml")))
    raise FileNotFoundError(f"{name_or_path}: no such config file, nor a shipped overlay (shipped: {names})")


def bundle_config_files(bundle: str | os.PathLike, name: str, overlays: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Absolute paths of ``<bundle>/configs/<name>.yaml`` followed by the overlay files, each checked to exist."""
    bundle = Path(bundle).resolve()
    main = bundle / "configs" / f"{name}.yaml"
    if not main.is_file():
        raise FileNotFoundError(f"{main}: no such bundle config ({bundle} is not a bundle with configs/{name}.yaml)")
    files = [main]
    for overlay in overlays:
        path = Path(overlay).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{overlay}: no such overlay config file")
        files.append(path)
    return [str(f) for f in files]


def read_bundle_config(
    bundle: str | os.PathLike,
    name: str,
    overlays: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ConfigParser:
    """The one way medseg reads a bundle config without running it: ``<bundle>/configs/<name>.yaml`` with the
    overlays merged in order, ``configs/metadata.json`` as ``_meta_``, ``bundle_root`` the bundle folder and
    ``overrides`` last, as MONAI's runner builds it. Parse content inside ``contextlib.chdir(bundle)``, where the
    bundle's ``%configs/...`` macros resolve.

    Raises:
        FileNotFoundError: naming the missing config or overlay.
        ValueError: naming a metadata.json that is not valid JSON.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle, name, overlays))
    metadata = Path(bundle).resolve() / "configs" / "metadata.json"
    if metadata.is_file():
        try:
            parser.read_meta(str(metadata))
        except ValueError as err:  # json's message names no file
            raise ValueError(f"{metadata}: not valid JSON ({err})") from None
    parser.update({"bundle_root": str(Path(bundle).resolve()), **dict(overrides or {})})
    return parser
