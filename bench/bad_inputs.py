"""The bad-input matrix (issue #34 item 16): each kind of bad input a command meets, and what the user sees.

Every case builds its files in a fresh folder, runs one command there (medseg's ``main()`` in this process, the
installed ``medseg`` console script, or MONAI's runner ``python -m monai.bundle run``) and records the exit code,
stderr and every file the command added, changed or removed in that folder. ``tests/test_bad_inputs.py`` runs the
same table and holds each case to the contract: exit 1 (2 for a usage error), one line on stderr naming the file
and the problem, no traceback, nothing written, nothing overwritten.

    python bench/bad_inputs.py    # runs every case, writes bench/results/bad_inputs.md
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from medseg.cli import main
from medseg.data.synthetic import write_synthetic_drive

from common import REPO, RESULTS, machine_line, markdown_table

TABLE = RESULTS / "bad_inputs.md"
DRIVE_BUNDLE = REPO / "bundles" / "drive_vessel_unet"
CAMVID_WEIGHTS = REPO / "bundles" / "camvid_unet" / "models" / "model.pt"
MEDSEG_SCRIPT = Path(sys.executable).parent / "medseg"
# what the table writes for each case's private folder, so that the committed table does not change from run to run
SANDBOX_NAME = "$CASE"
# the warning MONAI's runner prints for every config it parses, good input or bad
MONAI_TRUST_WARNING = "monai/bundle/scripts.py"
MONAI_READS_METADATA = ("MONAI: its runner reads metadata.json itself (ConfigParser.read_meta) and lets json's error "
                        "out as a traceback, before any medseg code runs")


class Unavailable(Exception):
    """This machine cannot stage the case (no ``mount``, no ``chattr``); the message says why."""


@dataclass(frozen=True)
class Call:
    """One command line: ``argv`` for ``main()`` / the console script, or for ``python -m monai.bundle``;
    ``named`` is the file its error line must name; ``cwd`` defaults to the case's folder."""

    argv: list[str]
    named: Path
    cwd: Path | None = None


@dataclass(frozen=True)
class Case:
    """A kind of bad input: ``stage`` writes it into the case's folder (cleanups go on the stack) and returns the
    command; the error line must hold ``problem``; ``entry`` is how the command runs; ``pending`` names the issue
    item whose fix the case waits for (the test expects it to fail until then)."""

    name: str
    command: str
    stage: Callable[[Path, contextlib.ExitStack], Call]
    problem: str
    entry: str = "main"  # "main" | "console" | "monai"
    code: int = 1
    pending: str | None = None


@dataclass
class Outcome:
    """What a case did: exit code, stdout and stderr, and the files it added, changed or removed."""

    call: Call
    code: int
    stdout: str
    stderr: str
    changed: list[str] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        """stderr without medseg's INFO records and, for a usage error, argparse's usage block above the error."""
        lines = [line for line in self.stderr.splitlines() if line.strip() and not line.startswith("INFO: ")]
        if self.call.argv[:1] == ["run"] and lines and MONAI_TRUST_WARNING in lines[0]:
            lines = lines[2:]  # MONAI's runner warns on every config it parses, and shows the warning's source line
        if self.code == 2 and any(": error: " in line for line in lines):
            lines = lines[next(i for i, line in enumerate(lines) if ": error: " in line):]
        return lines

    def breaches(self, case: Case) -> list[str]:
        """How the outcome breaks the contract; empty when it keeps it."""
        found = []
        if self.code != case.code:
            found.append(f"exit {self.code}, not {case.code}")
        if "Traceback" in self.stderr:
            found.append("a traceback")
        lines = self.error_lines
        if len(lines) != 1:
            found.append(f"{len(lines)} error lines, not 1")
        elif str(self.call.named) not in lines[0] or case.problem not in lines[0]:
            found.append(f"the line does not name {self.call.named.name} and {case.problem!r}")
        if self.changed:
            found.append("files written or changed: " + ", ".join(self.changed))
        return found


# --- files --------------------------------------------------------------------------------------------------

def photograph(path: Path, size: tuple[int, int] = (48, 64), **save) -> Path:
    """An RGB fundus-like photograph of (H, W) ``size``, in the format of ``path``'s suffix: random bright pixels in
    a disc on a black surround, so that its FOV is found (no warning joins the error line)."""
    pixels = np.random.default_rng(len(path.name)).integers(80, 256, (*size, 3), dtype=np.uint8)
    rows, columns = np.ogrid[: size[0], : size[1]]
    outside = (rows - size[0] / 2) ** 2 + (columns - size[1] / 2) ** 2 > (0.45 * min(size)) ** 2
    pixels[outside] = 0
    Image.fromarray(pixels).save(path, **save)
    return path


def truncated(path: Path) -> Path:
    """``path`` cut to half its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def volume(path: Path, shape: tuple[int, ...] = (24, 24, 6), dtype=np.int16) -> Path:
    """A random NIfTI volume."""
    data = np.random.default_rng(0).integers(0, 300, shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def float_tiff(path: Path, bad_value: float) -> Path:
    """A one-channel float32 TIFF whose pixel (3, 3) is ``bad_value`` (NaN or infinite)."""
    pixels = np.random.default_rng(1).random((48, 64), dtype=np.float32)
    pixels[3, 3] = bad_value
    Image.fromarray(pixels).save(path)
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def text_checkpoint(root: Path) -> Path:
    """A ``.pt`` file that holds a line of text."""
    return written(root / "model.pt", b"weights\n")


def earlier_output(folder: Path, *names: str) -> Path:
    """``folder`` holding outputs of an earlier run, which a failing run must leave byte-identical."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"an earlier run's output " + name.encode())
    return folder


class Payload:
    """Unpickling it calls ``open(marker, "w")``: a file appears if the payload ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def pickled_payload(path: Path) -> Path:
    torch.save({"network": Payload(path.with_name("payload_ran"))}, path)
    return path


def bundle_copy(root: Path, copy_weights: bool = False) -> Path:
    """The DRIVE bundle's configs in ``root/bundle``, its weights linked (read only) or copied (to be replaced)."""
    bundle = root / "bundle"
    shutil.copytree(DRIVE_BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    weights = DRIVE_BUNDLE / "models" / "model.pt"
    if copy_weights:
        shutil.copy(weights, bundle / "models" / "model.pt")
    else:
        (bundle / "models" / "model.pt").symlink_to(weights)
    return bundle


def broken_bundle(root: Path) -> Path:
    """A copy of the DRIVE bundle whose metadata.json is cut mid-file."""
    bundle = bundle_copy(root)
    truncated(bundle / "configs" / "metadata.json")
    return bundle


def tiny_tmpfs(folder: Path, stack: contextlib.ExitStack, size: str = "64k") -> Path:
    """``folder`` as a ``size`` tmpfs (a full disk, once ``size`` is written), unmounted when the stack closes."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        raise Unavailable(f"no full disk to simulate: `mount -t tmpfs` was refused ({mounted.stderr.strip()}); "
                          "it needs root with CAP_SYS_ADMIN")
    stack.callback(subprocess.run, ["umount", str(folder)], check=True)
    return folder


def immutable(folder: Path, stack: contextlib.ExitStack) -> Path:
    """``folder`` made immutable with ``chattr +i``: even root cannot write in it (mode bits do not stop root)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"no read-only folder to write into: `chattr +i` failed ({done.stderr.strip()}); "
                          "as root, mode bits do not stop a write, and this filesystem has no immutable flag")
    stack.callback(subprocess.run, ["chattr", "-i", str(folder)], check=True)
    return folder


def under_a_file(root: Path) -> Path:
    """A folder path below a regular file: no one, root included, can create it."""
    (root / "plain_file").write_text("not a folder")
    return root / "plain_file" / "out"


# --- cases --------------------------------------------------------------------------------------------------

def infer(root: Path, image: Path, *extra: str, model: Path = DRIVE_BUNDLE, out: Path | None = None) -> Call:
    """``medseg infer MODEL IMAGE -o OUT --overwrite``, OUT holding the outputs an earlier run wrote for IMAGE,
    which the failing run must not replace."""
    stem = image.name.split(".")[0]
    out = out or earlier_output(root / "out", f"{stem}_mask.png", f"{stem}_overlay.png")
    return Call(["infer", str(model), str(image), "-o", str(out), "--overwrite", "--scale", "none", *extra], image)


def with_checkpoint(call: Call, checkpoint: Path) -> Call:
    """``call`` (an infer of a bundle) with the bundle's weights replaced by ``checkpoint``, the file to name."""
    return Call([*call.argv, "--checkpoint", str(checkpoint)], checkpoint)


def infer_case(name: str, problem: str, make_image: Callable[[Path], Path], **case) -> Case:
    return Case(name, "infer", lambda root, stack: infer(root, make_image(root)), problem, **case)


def synthetic_drive(root: Path) -> Path:
    return write_synthetic_drive(root / "drive", n_training=2, n_test=1, seed=3)


def data_check(root: Path, damage: Callable[[Path], Path]) -> Call:
    drive = synthetic_drive(root)
    return Call(["data", "check", "--dataset", "drive", "--root", str(drive)], damage(drive))


def vessel_folders(root: Path, damage: Callable[[Path], Path]) -> Call:
    """``medseg evaluate BUNDLE --images --labels`` over two photographs and their labels, one damaged."""
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a", "b"):
        photograph(images / f"{name}.png", (40, 40))
        vessels = np.zeros((40, 40), dtype=np.uint8)
        vessels[10:14] = 255
        Image.fromarray(vessels).save(labels / f"{name}.png")
    named = damage(root)
    return Call(["evaluate", str(DRIVE_BUNDLE), "--images", str(images), "--labels", str(labels),
                 "--output-dir", str(root / "out")], named)


def grey_label(root: Path) -> Path:
    label = root / "labels" / "b.png"
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 128
    Image.fromarray(values).save(label)
    return label


def jpeg_photograph(root: Path) -> Path:
    """Photograph b as a JPEG cut in half."""
    (root / "images" / "b.png").unlink()
    return truncated(photograph(root / "images" / "b.jpg", (40, 40), quality=95))


def no_labels(root: Path) -> Path:
    shutil.rmtree(root / "labels")
    return root / "labels"


def small_label(root: Path) -> Path:
    label = root / "labels" / "b.png"
    Image.open(label).crop((0, 0, 30, 40)).save(label)
    return label


def bundle_ship(root: Path, checkpoint: Path) -> Call:
    """``medseg bundle ship`` into a copy of the DRIVE bundle (its weights and metadata must stay)."""
    bundle = bundle_copy(root, copy_weights=True)
    return Call(["bundle", "ship", str(bundle), str(checkpoint), "--output-dir", str(root / "out"),
                 "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--data-root", str(synthetic_drive(root)),
                 "--set", "val_images=1"],
                checkpoint)


def export(root: Path, target: Path, bundle: Path = DRIVE_BUNDLE) -> Call:
    return Call(["bundle", "export", str(bundle), str(target)], target)


def monai_inference(root: Path, image: Path, bundle: Path | None = None) -> Call:
    """MONAI's runner on a copy of the DRIVE bundle's inference config, from the bundle folder."""
    bundle = bundle or bundle_copy(root)
    out = earlier_output(root / "out", f"{image.name.split('.')[0]}_mask.png")
    return Call(["run", "--config_file", "configs/inference.yaml", "--input_files", repr([str(image)]),
                 "--output_dir", str(out), "--overwrite", "True", "--dataset_dir", str(root)], image, cwd=bundle)


def train(root: Path, damage: Callable[[Path], Path], output: Path | None = None) -> Call:
    drive = synthetic_drive(root)
    named = damage(drive)
    return Call(["train", str(DRIVE_BUNDLE), "--data-root", str(drive), "--output-dir", str(output or root / "out"),
                 "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--set", "ensemble_members=1",
                 "--set", "val_images=1", "--set", "max_epochs=1", "--quiet"], named)


def first_training_image(drive: Path) -> Path:
    return truncated(drive / "training" / "images" / "02_training.tif")


def empty_mask(drive: Path) -> Path:
    mask = drive / "training" / "mask" / "03_training_mask.gif"
    mask.write_bytes(b"")
    return mask


def nan_image(drive: Path) -> Path:
    image = drive / "training" / "images" / "02_training.tif"
    float_tiff(image, np.nan)
    return image


CASES = [
    # every format, cut or garbled, read by medseg infer
    infer_case("truncated TIFF", "corrupt or unreadable image",
               lambda root: truncated(photograph(root / "photo.tif"))),
    infer_case("truncated PNG", "corrupt or unreadable image",
               lambda root: truncated(photograph(root / "photo.png"))),
    infer_case("truncated JPEG", "corrupt or unreadable image",
               lambda root: truncated(photograph(root / "photo.jpg", quality=95))),
    infer_case("GIF with garbage after its header", "corrupt or unreadable image",
               lambda root: written(root / "photo.gif", b"GIF89a" + bytes(200))),
    infer_case("truncated NIfTI (.nii.gz)", "corrupt or unreadable NIfTI",
               lambda root: truncated(volume(root / "scan.nii.gz"))),
    infer_case("NIfTI (.nii) that is random bytes", "corrupt or unreadable NIfTI",
               lambda root: written(root / "scan.nii", bytes(range(256)) * 3)),
    infer_case("empty PNG (0 bytes)", "corrupt or unreadable image",
               lambda root: written(root / "photo.png", b"")),
    infer_case("NaN in a float TIFF", "NaN or infinite", lambda root: float_tiff(root / "photo.tif", np.nan)),
    infer_case("Inf in a float TIFF", "NaN or infinite", lambda root: float_tiff(root / "photo.tif", np.inf)),
    infer_case("1-pixel image", "1 x 1", lambda root: photograph(root / "dot.png", (1, 1))),
    infer_case("3D volume given to a 2D fundus bundle", "2D fundus photographs", lambda root: volume(root / "scan.nii.gz")),
    # where the outputs go
    Case("output folder below a regular file", "infer",
         lambda root, stack: Call(infer(root, photograph(root / "photo.png"), out=under_a_file(root)).argv,
                                  under_a_file(root)),
         "is a file"),
    Case("read-only output folder (chattr +i)", "infer",
         lambda root, stack: infer(root, photograph(root / "photo.png"), out=immutable(root / "out", stack)),
         "Operation not permitted"),
    Case("full disk (a 64 KiB tmpfs)", "infer",
         lambda root, stack: infer(root, photograph(root / "photo.png", (256, 256)), "--save-prob",
                                   out=tiny_tmpfs(root / "out", stack)),
         "No space left on device"),
    # weights
    Case("checkpoint of another network", "infer",
         lambda root, stack: with_checkpoint(infer(root, photograph(root / "photo.png")), CAMVID_WEIGHTS),
         "do not fit the network"),
    Case("checkpoint that is a text file", "infer",
         lambda root, stack: with_checkpoint(infer(root, photograph(root / "photo.png")), text_checkpoint(root)),
         "not a readable checkpoint"),
    Case("pickled payload in a .pt file", "infer",
         lambda root, stack: with_checkpoint(infer(root, photograph(root / "photo.png")),
                                             pickled_payload(root / "model.pt")),
         "refused by torch.load(weights_only=True)", entry="console"),
    Case("bundle folder with a broken metadata.json", "infer",
         lambda root, stack: Call(infer(root, photograph(root / "photo.png"), model=broken_bundle(root)).argv,
                                  root / "bundle" / "configs" / "metadata.json"),
         "not valid JSON"),
    Case("window size that is not a number", "infer",
         lambda root, stack: Call(infer(root, photograph(root / "photo.png")).argv + ["--roi", "big"], Path("big")),
         "--roi", code=2),
    # data check
    Case("empty FOV mask GIF (0 bytes)", "data check", lambda root, stack: data_check(root, empty_mask),
         "corrupt or unreadable image", entry="console"),
    Case("NaN in a float TIFF photograph", "data check", lambda root, stack: data_check(root, nan_image),
         "NaN or infinite"),
    # evaluate
    Case("label with a grey value", "evaluate --images", lambda root, stack: vessel_folders(root, grey_label),
         "not a binary label"),
    Case("label smaller than its photograph", "evaluate --images",
         lambda root, stack: vessel_folders(root, small_label), "size mismatch"),
    Case("truncated JPEG photograph", "evaluate --images",
         lambda root, stack: vessel_folders(root, jpeg_photograph),
         "corrupt or unreadable image"),
    Case("missing labels folder", "evaluate --images",
         lambda root, stack: vessel_folders(root, no_labels),
         "missing folder"),
    Case("checkpoint that is a text file", "evaluate",
         lambda root, stack: Call(
             ["evaluate", str(DRIVE_BUNDLE), "--checkpoint", str(text_checkpoint(root)), "--data-root",
              str(synthetic_drive(root)), "--output-dir", str(root / "out"),
              "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"], root / "model.pt"),
         "not a readable checkpoint"),
    # train
    Case("truncated training photograph", "train", lambda root, stack: train(root, first_training_image),
         "corrupt or unreadable image"),
    Case("output folder below a regular file", "train",
         lambda root, stack: train(root, lambda drive: under_a_file(root), output=root / "plain_file" / "out"),
         "is a file"),
    # bundle ship / export
    Case("pickled payload in a .pt file", "bundle ship",
         lambda root, stack: bundle_ship(root, pickled_payload(root / "model.pt")),
         "refused by torch.load(weights_only=True)"),
    Case("checkpoint of another network", "bundle ship",
         lambda root, stack: bundle_ship(root, CAMVID_WEIGHTS), "nothing shipped"),
    Case("bundle folder with a broken metadata.json", "bundle export",
         lambda root, stack: Call(export(root, root / "exported", broken_bundle(root)).argv,
                                  root / "bundle" / "configs" / "metadata.json"),
         "not valid JSON"),
    Case("target below a regular file", "bundle export",
         lambda root, stack: export(root, under_a_file(root)), "is a file", entry="console"),
    Case("full disk (a 64 KiB tmpfs)", "bundle export",
         lambda root, stack: export(root, tiny_tmpfs(root / "disk", stack) / "exported"),
         "No space left on device"),
    # MONAI's runner on a bundle config
    Case("truncated PNG", "python -m monai.bundle run",
         lambda root, stack: monai_inference(root, truncated(photograph(root / "photo.png"))),
         "corrupt or unreadable image", entry="monai"),
    Case("bundle folder with a broken metadata.json", "python -m monai.bundle run",
         lambda root, stack: Call(monai_inference(root, photograph(root / "photo.png"), broken_bundle(root)).argv,
                                  root / "bundle" / "configs" / "metadata.json", cwd=root / "bundle"),
         "not valid JSON", entry="monai", pending=MONAI_READS_METADATA),
]


# --- running ------------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its path relative to ``root`` and a digest (``dir`` for folders)."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink() or path.is_file():
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "link"
        elif path.is_dir():
            found[relative] = "dir"
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = [f"+{path}" for path in after if path not in before]
    removed = [f"-{path}" for path in before if path not in after]
    changed = [f"~{path}" for path in after if path in before and after[path] != before[path]]
    return added + removed + changed


def invoke(case: Case, call: Call, cwd: Path) -> tuple[int, str, str]:
    """Run the call as the case says; an exception escaping ``main()`` is a traceback, as the console shows it."""
    if case.entry == "main":
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), contextlib.chdir(cwd):
            try:
                code = main(call.argv)
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:
                import traceback

                traceback.print_exc()
                code = 1
        return code, stdout.getvalue(), stderr.getvalue()
    command = [str(MEDSEG_SCRIPT)] if case.entry == "console" else [sys.executable, "-m", "monai.bundle"]
    done = subprocess.run(command + call.argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def run_case(case: Case, root: Path) -> Outcome:
    """Stage ``case`` in the empty folder ``root``, run it, and say what it did."""
    with contextlib.ExitStack() as stack:
        call = case.stage(root, stack)
        before = snapshot(root)
        code, stdout, stderr = invoke(case, call, call.cwd or root)
        outcome = Outcome(call, code, stdout, stderr, changes(before, snapshot(root)))
    return outcome


def table_row(case: Case, outcome: Outcome | None, root: Path, skipped: str | None) -> list[str]:
    def shown(text: str) -> str:
        return text.replace(str(root), SANDBOX_NAME).replace(str(REPO), ".").replace("|", "\\|")

    if outcome is None:
        return [case.command, case.name, "-", "-", "-", f"skipped: {shown(skipped or '')}"]
    runner = ["medseg"] if case.entry != "monai" else ["python", "-m", "monai.bundle"]
    command = shlex.join([*runner, *outcome.call.argv])
    breaches = outcome.breaches(case)
    verdict = "kept" if not breaches else ("waits for " + case.pending if case.pending else "; ".join(breaches))
    lines = outcome.error_lines
    message = lines[0] if len(lines) == 1 else (f"{len(lines)} lines, the last: {lines[-1]}" if lines else "(none)")
    message = message if len(message) <= 400 else message[:396] + " ..."
    return [case.command, case.name, f"`{shown(command)}`", str(outcome.code), shown(message), verdict]


def main_table() -> str:
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory(prefix="bad_input_") as folder:
            root = Path(folder)
            try:
                rows.append(table_row(case, run_case(case, root), root, None))
            except Unavailable as reason:
                rows.append(table_row(case, None, root, str(reason)))
            print(rows[-1], flush=True)
    header = [
        "# Bad inputs: what each command says",
        "",
        "Written by `python bench/bad_inputs.py`, which runs the case table that `tests/test_bad_inputs.py` checks. "
        f"Each case runs in a fresh folder, shown as `{SANDBOX_NAME}`. The contract: exit 1 (2 for a usage error), "
        "one line on stderr naming the file and the problem, no traceback, nothing written, nothing overwritten "
        "(every case with outputs starts with an earlier run's outputs in place).",
        f"Measured on {machine_line()}.",
        "",
    ]
    table = markdown_table(["command", "bad input", "command line", "exit", "stderr", "contract"], rows,
                           text_columns=6)
    return "\n".join(header + table) + "\n"


if __name__ == "__main__":
    TABLE.write_text(main_table())
    print(f"wrote {TABLE}")
