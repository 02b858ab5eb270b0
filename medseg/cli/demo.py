"""``medseg demo``: the main job end to end on the built-in synthetic retina, no download needed.

Generates a DRIVE-layout synthetic dataset, checks and previews it, trains the DRIVE U-Net bundle with the
small ``configs/demo.yaml`` overlay (MLflow tracking on), evaluates it with the DRIVE protocol, runs
sliding-window inference on the test images, and prints where everything is. Each step is the same command a
user would type (``medseg data``, ``train``, ``evaluate``, ``infer``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli import CLIError, mlflow_ui_command
from medseg.resources import bundle_folder, overlay_file


def _step(title: str, argv: list[str]) -> None:
    from medseg.cli import main

    print(f"\n== {title}: medseg {' '.join(argv)}", flush=True)
    if main(argv) != 0:
        raise CLIError(f"demo step failed: {title}")


def _demo(args: argparse.Namespace) -> int:
    from medseg.data.synthetic import ensure_synthetic_drive
    from medseg.tracking import default_tracking_uri

    bundle, overlay = bundle_folder("drive_vessel_unet"), overlay_file("demo.yaml")
    out = args.output.resolve()
    data = ensure_synthetic_drive(out / "synthetic_drive", n_training=args.images, n_test=4, seed=args.seed)
    run = out / "run"
    tracking_uri = args.tracking_uri or default_tracking_uri()
    _step("check the data", ["data", "check", "--dataset", "synthetic", "--root", str(data)])
    _step("preview the labels", ["data", "preview", "--dataset", "synthetic", "--root", str(data), "--out",
                                 str(out / "preview.png"), "-n", "4"])
    common = [str(bundle), "--config", str(overlay), "--data-root", str(data), "--output-dir", str(run),
              "--set", f"seed={args.seed}"]
    _step("train", ["train", *common, "--tracking-uri", tracking_uri])
    _step("evaluate", ["evaluate", *common, "--checkpoint", str(run / "checkpoints" / "model.pt"),
                       "--tracking-uri", tracking_uri])
    _step("infer", ["infer", str(bundle), str(data / "test" / "images"), "--output", str(out / "predictions"),
                    "--checkpoint", str(run / "checkpoints" / "model.pt"), "--config", str(overlay), "--overwrite"])
    print(
        f"\nDone. Outputs in {out}:\n"
        f"  preview.png, run/artifacts/ (curves, ROC/PR, overlays), run/metrics_test.json, predictions/\n"
        f"Review the run in MLflow:  {mlflow_ui_command(tracking_uri)}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on built-in synthetic data (data check, train, evaluate, infer, MLflow)",
        description="The main job on the built-in synthetic retina: no download, a few minutes on a CPU.",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs") / "demo", help="output folder")
    parser.add_argument("--images", type=int, default=12, help="synthetic training images (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    parser.set_defaults(func=_demo)
