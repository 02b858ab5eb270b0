"""``medseg bundle list`` / ``info BUNDLE``: what the MONAI bundles are, from their files; ``export NAME DIR``: a
plain bundle folder (``--onnx``: with ``models/model.onnx``); ``ship``: release weights.

``list`` and ``info`` read ``configs/metadata.json`` and ``configs/train.yaml`` as data (JSON / YAML); no config
expression is evaluated, so looking at a bundle does not run it. ``ship BUNDLE CHECKPOINT`` runs the bundle's
evaluate.yaml on the test split with the new weights (several checkpoints: the ensemble of their networks), and only
when that succeeds replaces ``models/model.pt`` and the ``eval_metrics`` of metadata.json, so the recorded numbers are
always those of the shipped file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from mlflow.exceptions import MlflowException

from medseg.cli import (
    CLIError,
    add_bundle_arguments,
    bundle_overrides,
    creatable_folder,
    ensemble_plan,
    joined_weights,
    output_dir,
)
# the same folder arguments and checks as medseg train
from medseg.cli.train import add_training_folder_arguments, folder_training
from medseg.data import DatasetError
from medseg.engines.evaluation import eval_metrics_from_report
from medseg.engines.finetune import (fine_tuned_metadata, folder_summary, held_out_records, heldout_eval_metrics,
                                     trained_fov_width)
from medseg.engines.width import WIDENING_GRID, MeasuredWidening, measure_widening_and_score
from medseg.engines.workflow import run_bundle_config
from medseg.fundus import RESAMPLED_VESSEL_WIDENING
from medseg.inference import export_onnx, load_model
from medseg.networks import ensemble_size
from medseg.resources import bundles_root, is_packaged
from medseg.utils import atomic_folder, format_table, one_line
from medseg.tracking import default_tracking_uri, source_run_tags, training_record

# the parts of a bundle that are shipped; eval/ and other run outputs are not
BUNDLE_PARTS = ("configs", "models", "docs", "scripts")
# weights are the only binaries a bundle commits; each file stays under this size
MAX_WEIGHTS_BYTES = 25 * 1024**2
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
TRUST_NOTE = "trust: bundle configs run Python expressions: load bundles only from trusted sources"


def read_metadata(bundle: Path) -> dict:
    path = bundle / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file ({bundle} is not a MONAI bundle)") from None
    except json.JSONDecodeError as err:
        raise CLIError(f"{path}: not valid JSON ({err})") from None


def network_name(bundle: Path) -> str:
    """Class name of ``network_def`` in train.yaml, e.g. ``"UNet"``, followed by ``" xN"`` for a bundle that ships an
    ensemble of N of them; ``"-"`` when it has none."""
    path = bundle / "configs" / "train.yaml"
    try:
        config = (yaml.safe_load(path.read_text()) if path.is_file() else {}) or {}
    except yaml.YAMLError as err:
        raise CLIError(f"{path}: not valid YAML ({err})") from None
    name = config.get("network_def", {}).get("_target_", "-").rsplit(".", 1)[-1]
    members = config.get("ensemble_members", 1)
    return f"{name} x{members}" if isinstance(members, int) and members > 1 else name


def format_value(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_line(metrics: dict) -> str:
    return ", ".join(f"{name}={format_value(value)}" for name, value in metrics.items()) or "-"


def format_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.1f} MiB"


def bundle_files(bundle: Path) -> list[Path]:
    """The shipped files: top-level files and everything under configs/, models/, docs/ and scripts/."""
    files = [path for path in bundle.iterdir() if path.is_file()]
    for part in BUNDLE_PARTS:
        files += [path for path in (bundle / part).rglob("*") if path.is_file()]
    return sorted(path for path in files if not path.name.startswith("."))


def find_bundle(name_or_path: str, root: Path) -> Path:
    """A bundle folder given as a path, or by name under ``root`` (the shipped bundles by default)."""
    for candidate in (Path(name_or_path), root / name_or_path):
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate.resolve()
    names = ", ".join(path.parents[1].name for path in sorted(root.glob("*/configs/metadata.json"))) or "none"
    raise CLIError(f"{name_or_path}: not a bundle folder, nor a bundle under {root} (bundles there: {names})")


def port_description(name: str, port: dict) -> str:
    """``image: 3 channels (R, G, B), spatial shape 16*n x 16*n, float32 magnitude``."""
    channels = ", ".join(port.get("channel_def", {}).values())
    shape = " x ".join(str(size) for size in port.get("spatial_shape", [])) or "-"
    return (
        f"{name}: {port.get('num_channels', '?')} channels ({channels}), spatial shape {shape}, "
        f"{port.get('dtype', '?')} {port.get('format', '')}".rstrip()
    )


def licence(bundle: Path) -> str:
    """The first paragraph of the bundle's LICENSE, on one line."""
    path = bundle / "LICENSE"
    if not path.is_file():
        return "no LICENSE file"
    first_paragraph = path.read_text().strip().split("\n\n", 1)[0]
    return " ".join(first_paragraph.split())


def _root(args: argparse.Namespace) -> Path:
    return (args.root or bundles_root()).resolve()


def _list(args: argparse.Namespace) -> int:
    root = _root(args)
    bundles = sorted(path.parents[1] for path in root.glob("*/configs/metadata.json"))
    if not bundles:
        raise CLIError(f"{root}: no bundles (folders with configs/metadata.json)")
    rows = []
    for bundle in bundles:
        meta = read_metadata(bundle)
        rows.append([bundle.name, meta.get("version", "-"), meta.get("task", "-"), network_name(bundle),
                     metrics_line(meta.get("eval_metrics") or {})])
    # on a terminal, lines as wide as it (a wrapped line breaks the columns); piped, every cell whole
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(format_table(["bundle", "version", "task", "network", "eval metrics"], rows, max_width=width))
    return 0


def _info(args: argparse.Namespace) -> int:
    bundle = find_bundle(args.bundle, _root(args))
    meta = read_metadata(bundle)
    data_format = meta.get("network_data_format", {})
    lines = [
        f"{bundle.name} {meta.get('version', '-')}  ({bundle})",
        f"task: {meta.get('task', '-')}",
        f"network: {network_name(bundle)}",
        f"description: {meta.get('description', '-')}",
        "changelog:",
        *(f"  {version}: {change}" for version, change in meta.get("changelog", {}).items()),
        f"data: {meta.get('data_source', '-')}",
        f"intended use: {meta.get('intended_use', '-')}",
        f"licence: {licence(bundle)}",
        "inputs:",
        *(f"  {port_description(name, port)}" for name, port in data_format.get("inputs", {}).items()),
        "outputs:",
        *(f"  {port_description(name, port)}" for name, port in data_format.get("outputs", {}).items()),
        "eval metrics:",
        *(f"  {name}: {format_value(value)}" for name, value in (meta.get("eval_metrics") or {}).items()),
    ]
    if not meta.get("eval_metrics"):
        lines.append("  none recorded")
    files = bundle_files(bundle)
    lines += ["files:", *(f"  {path.relative_to(bundle)}  {format_size(path.stat().st_size)}" for path in files)]
    if not any(path.suffix in (".pt", ".ts") for path in files):
        lines.append("  (no weights in models/: train the bundle first)")
    lines += [
        "commands:",
        f"  medseg train {bundle}",
        f"  medseg evaluate {bundle}",
        f"  medseg infer {bundle} IMAGES -o OUTPUT_DIR",
        f"  cd {bundle} && python -m monai.bundle run --config_file configs/train.yaml --tracking mlflow",
        f"  cd {bundle} && python -m monai.bundle run --config_file configs/evaluate.yaml",
        f"  cd {bundle} && python -m monai.bundle run --config_file configs/inference.yaml --input_files \"['IMAGE']\"",
        f"  cd {bundle} && torchrun --nproc_per_node=N -m monai.bundle run "
        "--config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\"",
        TRUST_NOTE,
    ]
    print("\n".join(lines))
    return 0


def write_weights(state_dict: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """Save ``state_dict`` as a plain state dict, as the bundles' trainers save ``model.pt`` and as MONAI's
    ``ckpt_export`` reads it, with its floating-point tensors cast to ``dtype`` (integer buffers such as batch-norm
    counters stay as they are); loading casts them back to the network's own dtype."""
    torch.save({name: value.to(dtype) if value.is_floating_point() else value for name, value in state_dict.items()}, path)


def _ship_new_bundle(args: argparse.Namespace) -> int:
    """``ship BUNDLE CHECKPOINT... --new-bundle DIR --images ...``: a copy of BUNDLE in DIR with the weights of a
    training on a labelled folder, scored on its held-out photographs through the inference path, with the MLflow
    record of that training in its metadata, and registered in the Model Registry under DIR's name."""
    parent, target = args.bundle.resolve(), args.new_bundle.resolve()
    training = folder_training(args)
    if training is None:
        raise CLIError("--new-bundle needs the folder the weights were trained on: --images DIR --labels DIR")
    if training.folder.has_classes:  # its held-out score is the vessel path's (evaluate_vessel_folder)
        raise CLIError(f"--new-bundle scores the weights on the folder's held-out photographs as vessel maps; "
                       f"{parent.name} learns classes, whose weights it does not ship from a folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CLIError(f"{target}: exists and is not an empty folder; nothing shipped")
    state_dict, seed = joined_weights(args.checkpoints), ensemble_plan(args).split_seed
    report_path = output_dir(args) / "metrics_heldout.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medseg-ship-") as work:
        candidate = Path(work) / "model.pt"
        write_weights(state_dict, candidate, WEIGHT_DTYPES[args.dtype])
        try:
            model = load_model(parent, overlays=args.overlays, overrides=bundle_overrides(args), checkpoint=candidate)
            fov_width = trained_fov_width(args.checkpoints)  # inferred at the width they were trained at
            if fov_width is not None:
                model = model.with_settings(training_fov_width=fov_width)
            held_out, positive = held_out_records(training, seed), training.folder.label_positive or None
            # the held-out scores are those of the bundle shipped, which erodes by the widening measured on them
            widening, report = measure_widening_and_score(model, held_out, report_path, label_positive=positive)
        except (DatasetError, FileNotFoundError, ValueError) as err:
            raise CLIError(f"{', '.join(map(str, args.checkpoints))}: evaluating it with {parent.name} failed, "
                           f"nothing shipped ({err})") from None
        meta = fine_tuned_metadata(read_metadata(parent), parent.name, folder_summary(training, seed),
                                   heldout_eval_metrics(report), widening.widening if widening else None, fov_width)
        tracking_uri = args.tracking_uri or default_tracking_uri()
        record_training(meta, args.checkpoints, tracking_uri)
        with atomic_folder(target) as staging:  # a failed ship leaves no half-written bundle
            for path in bundle_files(parent):
                copy = staging / path.relative_to(parent)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy)
            shutil.copy2(candidate, staging / "models" / "model.pt")
            (staging / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    print(f"{target}: {parent.name} {meta['version']}, weights of {', '.join(map(str, args.checkpoints))}")
    print("eval_metrics (held-out photographs): " + metrics_line(meta["eval_metrics"]))
    print(widening_line(widening))
    register_shipped(target, meta, report_path, tracking_uri, args)
    print(f"infer with it: medseg infer {target} IMAGES -o OUTPUT_DIR")
    return 0


def widening_line(widening: MeasuredWidening | None) -> str:
    """What the new bundle erodes the edges of probabilities resampled up by, and where that came from."""
    if widening is None:
        return (f"resampled vessel widening: none of the held-out photographs is shrunk to the training FOV width; "
                f"medseg's {RESAMPLED_VESSEL_WIDENING} applies")
    clamped = (f" (the end of {WIDENING_GRID[0]} to {WIDENING_GRID[-1]}: the widths do not match inside it)"
               if widening.clamped else "")
    spread = (f" (one photograph alone: {min(widening.per_photograph):g} to {max(widening.per_photograph):g})"
              if len(widening.per_photograph) > 1 else "")
    return (f"resampled vessel widening: {widening.widening} network pixels{clamped}, measured on "
            f"{widening.photographs} held-out photographs{spread}, which the eval_metrics above are scored with")


def _ship(args: argparse.Namespace) -> int:
    if args.new_bundle is not None:
        return _ship_new_bundle(args)
    if args.images is not None:
        raise CLIError("weights trained on a labelled folder ship into a new bundle: add --new-bundle DIR")
    bundle = args.bundle.resolve()
    if is_packaged(bundle):
        raise CLIError(f"{bundle}: a bundle installed with medseg is not changed in place; "
                       f"`medseg bundle export {bundle.name} DIR` and ship into DIR")
    overrides = bundle_overrides(args)
    meta = read_metadata(bundle)
    state_dict = joined_weights(args.checkpoints)
    shipped = ", ".join(map(str, args.checkpoints))
    models = bundle / "models"
    models.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models, prefix=".ship-") as work:
        candidate, report_path = Path(work) / "model.pt", output_dir(args) / "metrics_test.json"
        write_weights(state_dict, candidate, WEIGHT_DTYPES[args.dtype])
        size = candidate.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise CLIError(
                f"{shipped}: {format_size(size)} as {args.dtype}, over the {format_size(MAX_WEIGHTS_BYTES)} "
                "a bundle's weights may take" + (" (try --dtype float16)" if args.dtype == "float32" else "")
            )
        # the bundle's own count of networks, not the weights': the shipped file must be the ensemble it declares
        plan = ensemble_plan(args)
        overrides.update(split="test", ckpt_path=str(candidate), metrics_file=str(report_path),
                         ensemble_members=plan.members)
        try:
            run_bundle_config(bundle, "evaluate", overlays=args.overlays, overrides=overrides, workflow_type="eval")
        except Exception as err:  # a network that does not match the weights, missing data, ...: ship nothing
            members = ensemble_size(state_dict)
            raise CLIError(f"{shipped} ({members} network{'s' if members > 1 else ''}): evaluating it with "
                           f"{bundle.name} failed, nothing shipped ({type(err).__name__}: {one_line(err)})") from None
        report = json.loads(report_path.read_text())
        meta["eval_metrics"] = eval_metrics_from_report(report)
        tracking_uri = args.tracking_uri or default_tracking_uri()
        record_training(meta, args.checkpoints, tracking_uri)
        if "threshold_val" in report:  # what medseg evaluate --images scores these weights at beside 0.5
            meta.setdefault("medseg", {})["validation_threshold"] = report["threshold_val"]["threshold"]
        # a widening measured on other weights' held-out photographs: these take the library's (bench/vessel_width.py)
        meta.get("medseg", {}).pop("resampled_vessel_widening", None)
        new_metadata = Path(work) / "metadata.json"
        new_metadata.write_text(json.dumps(meta, indent=4) + "\n")
        os.replace(candidate, models / "model.pt")
        os.replace(new_metadata, bundle / "configs" / "metadata.json")
    print(f"{models / 'model.pt'}: {format_size(size)} ({args.dtype})")
    print("eval_metrics: " + metrics_line(meta["eval_metrics"]))
    print(f"evaluation report: {report_path}")
    register_shipped(bundle, meta, report_path, tracking_uri, args)
    return 0


def record_training(meta: dict, checkpoints: list[Path], tracking_uri: str) -> None:
    """Set ``meta``'s ``medseg.training`` to the MLflow record of the run ``checkpoints`` came from, or drop it
    (a record of other weights would describe weights no longer shipped) and say so."""
    record = training_record(checkpoints, tracking_uri)
    if record is None:
        meta.get("medseg", {}).pop("training", None)
        print(f"no training run of {', '.join(map(str, checkpoints))} in {tracking_uri}: "
              "the metadata keeps no training record")
    else:
        meta.setdefault("medseg", {})["training"] = record


def register_shipped(bundle: Path, meta: dict, report_path: Path, tracking_uri: str, args: argparse.Namespace) -> None:
    """Record the shipped ``bundle`` in MLflow (:func:`medseg.tracking.models.ship_run`): a run nested under its
    weights' training run, the bundle as its model, a new version in the Model Registry under the bundle's name."""
    try:
        from medseg.tracking.models import ship_run  # MLflow's model machinery: only when shipping

        version = ship_run(bundle, meta["eval_metrics"], report_path, tracking_uri,
                           {key: value for key, value in bundle_overrides(args).items() if key != "output_dir"},
                           source_tags=source_run_tags(args.checkpoints, tracking_uri))
    except (MlflowException, OSError) as err:  # the bundle is shipped; only its registration failed
        raise CLIError(f"{bundle.name} shipped, but registering it in {tracking_uri} failed: {err}") from None
    print(f"registered in the MLflow Model Registry as models:/{version.name}/{version.version} ({tracking_uri})")


def _export(args: argparse.Namespace) -> int:
    source = find_bundle(args.bundle, _root(args))
    meta = read_metadata(source)  # a broken metadata.json is not exported
    target = creatable_folder(args.directory.resolve())
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CLIError(f"{target}: exists and is not an empty folder; nothing exported")
    files = bundle_files(source)
    try:
        with atomic_folder(target) as staging:  # a failed export leaves no half-written bundle
            for path in files:
                copy = staging / path.relative_to(source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy)
            if args.onnx:
                try:
                    files.append(export_onnx(load_model(staging), staging / "models" / "model.onnx"))
                except (FileNotFoundError, ValueError) as err:
                    raise CLIError(f"{source}: no ONNX export ({err}); nothing exported") from None
    except OSError as err:  # a full disk, a target below a file, a read-only folder
        raise CLIError(f"{target}: {err.strerror or err}; nothing exported") from None
    print(f"{target}: {source.name} {meta.get('version', '-')}, {len(files)} files")
    print(f"run it with MONAI's runner from there: cd {target} && python -m monai.bundle run --config_file "
          "configs/inference.yaml --input_files \"['image.tif']\" --output_dir predictions")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bundle",
        help="list the MONAI bundles, describe one, export one, ship new weights in one",
        description="Describe MONAI bundles from their metadata.json and configs, without running them; ship "
        "new weights in a bundle with their test metrics.",
    )
    commands = parser.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    root_help = "folder holding the bundles (default: the bundles medseg ships)"

    listing = commands.add_parser("list", help="table of the bundles: version, task, network, eval metrics")
    listing.add_argument("--root", type=Path, default=None, help=root_help)
    listing.set_defaults(func=_list)

    info = commands.add_parser(
        "info",
        help="one bundle's metadata, files, and the commands that run it",
        description="Version, changelog, task, description, data source and licence, inputs and outputs, "
        "recorded eval metrics, files with sizes, and the commands that train, evaluate and run the bundle.",
    )
    info.add_argument("bundle", help="bundle folder, or the name of a bundle under --root")
    info.add_argument("--root", type=Path, default=None, help=root_help)
    info.set_defaults(func=_info)

    export = commands.add_parser(
        "export",
        help="copy a bundle (configs, models, docs, LICENSE) into a plain MONAI bundle folder",
        description="Write BUNDLE's shipped files (not its run outputs) to DIRECTORY, a folder that MONAI's runner "
        "(python -m monai.bundle run / verify_metadata) uses like any bundle, and that `medseg bundle ship` may "
        "change. DIRECTORY must not exist or be empty.",
    )
    export.add_argument("bundle", help="a shipped bundle's name (see `medseg bundle list`) or a bundle folder")
    export.add_argument("directory", type=Path, help="the new bundle folder")
    export.add_argument("--root", type=Path, default=None, help=root_help)
    export.add_argument("--onnx", action="store_true",
                        help="also write models/model.onnx: the network, batch norms folded, with dynamic batch and "
                        "spatial axes (OpenVINO and ONNX Runtime read it)")
    export.set_defaults(func=_export)

    ship = commands.add_parser(
        "ship",
        help="put new weights in a bundle's models/model.pt and their test metrics in its metadata.json",
        description="Evaluate CHECKPOINT with the bundle's evaluate.yaml on the test split (several checkpoints: "
        "the ensemble of their networks, for a bundle whose ensemble_members says so); when that succeeds, write "
        "the weights (cast to --dtype) to BUNDLE/models/model.pt and the metrics to the eval_metrics of "
        "BUNDLE/configs/metadata.json. On any failure neither file changes.",
    )
    add_bundle_arguments(ship)
    ship.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT",
                      help="weights to ship, e.g. OUTPUT_DIR/checkpoints/model.pt; one per member of an ensemble")
    ship.add_argument("--tracking-uri", help="MLflow store of the Model Registry (default: sqlite:///mlflow.db here)")
    ship.add_argument("--dtype", choices=list(WEIGHT_DTYPES), default="float32",
                      help="storage dtype of the weights (float16 halves the file; default: float32)")
    ship.add_argument("--new-bundle", type=Path, metavar="DIR",
                      help="write a new bundle to DIR instead (BUNDLE is its parent): BUNDLE's files with these weights, "
                      "scored on the held-out photographs of the folder they were trained on (--images ... as given "
                      "to medseg train); its metadata names that folder (count, digest) and the parent bundle")
    add_training_folder_arguments(ship, "the folder the weights were trained on, with the same validation split")
    ship.set_defaults(func=_ship)
