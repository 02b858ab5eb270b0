"""Procedural stand-ins for the real data: fundus-like retina images with exact vessel labels, and 3D tubes.

The retina images are written in the DRIVE layout and file formats (:func:`write_synthetic_drive`) so that the
DRIVE reader, the validation and the whole pipeline read them through the same code path as the real data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import disk, line, polygon
from skimage.transform import resize

from medseg.utils import atomic_folder, atomic_path

DRIVE_SHAPE = (584, 565)  # (H, W)
FOV_RADIUS = 0.475  # of the image width: a circle covering ~68% of a DRIVE-sized image, like DRIVE's FOV
SECOND_OBSERVER_MIN_WIDTH = 1.5  # the synthetic "second observer" misses vessels thinner than this (pixels)
# DRIVE's 2nd_manual files are palette GIFs: index 0 -> (4, 2, 4), index 1 -> (252, 254, 252)
SECOND_OBSERVER_PALETTE = [4, 2, 4, 252, 254, 252]


@dataclass(frozen=True)
class _Segment:
    """A straight piece of vessel centreline from (r0, c0) to (r1, c1) with its width in pixels."""

    r0: float
    c0: float
    r1: float
    c1: float
    width: float


def _grow_tree(
    rng: np.random.Generator, start: tuple[float, float], angle: float, width: float, inside, depth: int = 0
) -> list[_Segment]:
    """Grow one vessel from ``start`` in direction ``angle`` (radians), branching into thinner children.

    The vessel walks in short steps with a slowly drifting direction; every so often it bifurcates, the parent
    continuing thinner and a child leaving at 25-60 degrees. Growth stops below 0.8 px width or outside the FOV.
    """
    segments: list[_Segment] = []
    r, c = start
    step = 4.0
    curvature = rng.normal(0.0, 0.02)
    next_branch = rng.uniform(40, 100)
    travelled = 0.0
    while width >= 0.8 and inside(r, c):
        angle += curvature + rng.normal(0.0, 0.06)
        r1, c1 = r + step * np.sin(angle), c + step * np.cos(angle)
        segments.append(_Segment(r, c, r1, c1, width))
        r, c, travelled = r1, c1, travelled + step
        width *= 0.997  # slow taper along the vessel
        if travelled >= next_branch and depth < 5:
            side = rng.choice((-1.0, 1.0))
            child_width = width * rng.uniform(0.45, 0.7)
            segments += _grow_tree(rng, (r, c), angle + side * rng.uniform(0.45, 1.05), child_width, inside, depth + 1)
            width *= rng.uniform(0.8, 0.92)
            angle -= side * rng.uniform(0.05, 0.25)
            travelled, next_branch = 0.0, rng.uniform(50, 120)
    return segments


def _rasterise(segments: list[_Segment], shape: tuple[int, int], min_width: float = 0.0) -> np.ndarray:
    """Draw the segments at least ``min_width`` wide as filled quads (thin ones as 1-px lines); bool (H, W)."""
    mask = np.zeros(shape, dtype=bool)
    for s in segments:
        if s.width < min_width:
            continue
        if s.width < 1.5:
            rr, cc = line(int(round(s.r0)), int(round(s.c0)), int(round(s.r1)), int(round(s.c1)))
            keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
            mask[rr[keep], cc[keep]] = True
            continue
        length = np.hypot(s.r1 - s.r0, s.c1 - s.c0)
        nr, nc = -(s.c1 - s.c0) / length * s.width / 2, (s.r1 - s.r0) / length * s.width / 2
        rr, cc = polygon(
            [s.r0 + nr, s.r1 + nr, s.r1 - nr, s.r0 - nr], [s.c0 + nc, s.c1 + nc, s.c1 - nc, s.c0 - nc], shape
        )
        mask[rr, cc] = True
        rr, cc = disk((s.r1, s.c1), s.width / 2, shape=shape)  # round joint so bends have no gaps
        mask[rr, cc] = True
    return mask


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells))
    return resize(coarse, shape, order=3, mode="reflect", anti_aliasing=False)


def _retina(
    seed: int, height: int, width: int
) -> tuple[np.ndarray, list[_Segment], np.ndarray, np.ndarray]:
    """(image, vessel segments, vessel mask, FOV mask) of one synthetic fundus."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    centre_r, centre_c = height / 2, width / 2
    radius = FOV_RADIUS * min(height, width)
    radial = np.hypot(rows - centre_r, cols - centre_c) / radius
    fov = radial <= 1.0

    side = rng.choice((-1.0, 1.0))  # left or right eye: which side the optic disc is on
    disc_r = centre_r + rng.uniform(-0.08, 0.08) * radius
    disc_c = centre_c + side * rng.uniform(0.45, 0.6) * radius
    disc_radius = rng.uniform(0.12, 0.16) * radius

    def inside(r: float, c: float) -> bool:
        return np.hypot(r - centre_r, c - centre_c) < radius

    # Four main arcades leave the disc up/down towards the macula plus smaller nasal branches.
    segments: list[_Segment] = []
    towards_macula = 0.0 if side < 0 else np.pi
    main_angles = [towards_macula + s * rng.uniform(1.0, 1.35) for s in (-1, 1)]
    main_angles += [towards_macula + np.pi + s * rng.uniform(0.5, 1.2) for s in (-1, 1)]
    main_angles += list(towards_macula + np.pi + rng.uniform(-0.4, 0.4, size=rng.integers(1, 3)))
    scale = min(height, width) / DRIVE_SHAPE[1]
    for i, angle in enumerate(main_angles):
        vessel_width = (rng.uniform(6.0, 7.5) if i < 4 else rng.uniform(3.0, 4.5)) * scale
        for offset in (-0.3, 0.3):  # each direction has an artery and a vein running side by side
            segments += _grow_tree(rng, (disc_r, disc_c), angle + offset, vessel_width * (1 + offset / 2), inside)

    vessels = _rasterise(segments, (height, width)) & fov

    illumination = 1.0 - 0.45 * radial**2 + 0.12 * _smooth_noise(rng, (height, width), 4)
    texture = 1.0 + 0.05 * _smooth_noise(rng, (height, width), 24)
    base = np.array([205.0, 95.0, 45.0]) * rng.uniform(0.85, 1.1, size=3)
    image = base * (illumination * texture)[..., None]
    disc = np.exp(-(((rows - disc_r) ** 2 + (cols - disc_c) ** 2) / (2 * disc_radius**2)))
    image += np.array([50.0, 110.0, 80.0]) * disc[..., None]
    macula_r, macula_c = disc_r, disc_c - side * 2.5 * disc_radius * 2
    macula = np.exp(-(((rows - macula_r) ** 2 + (cols - macula_c) ** 2) / (2 * (1.6 * disc_radius) ** 2)))
    image *= 1.0 - 0.25 * macula[..., None]
    # Vessels absorb mostly green light; a slight blur gives them a soft profile instead of hard edges.
    profile = ndimage.gaussian_filter(vessels.astype(np.float32), 0.8)
    image *= 1.0 - profile[..., None] * np.array([0.25, 0.55, 0.45]) * rng.uniform(0.8, 1.1)
    image += rng.normal(0.0, 3.0, size=image.shape)
    image *= ndimage.gaussian_filter(fov.astype(np.float32), 1.5)[..., None]  # dark outside the FOV, soft rim
    return np.clip(image, 0, 255).astype(np.uint8), segments, vessels, fov


def synthetic_retina(seed: int, height: int = 584, width: int = 565) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fundus-like image with its exact vessel label and FOV mask, fully determined by ``seed``.

    Returns (image uint8 (H, W, 3), vessel uint8 (H, W) in {0, 1}, fov uint8 (H, W) in {0, 1}). Vessels are
    branching trees from an optic disc, thinning at every bifurcation; the label is exactly the drawn vessels
    inside the circular FOV.
    """
    image, _, vessels, fov = _retina(seed, height, width)
    return image, vessels.astype(np.uint8), fov.astype(np.uint8)


def _write_drive_sample(split_dir: Path, split: str, image_id: str, seed: int) -> None:
    """Write one synthetic retina's image, 1st_manual, mask (and 2nd_manual for test) with DRIVE's names."""
    image, segments, vessels, fov = _retina(seed, *DRIVE_SHAPE)
    Image.fromarray(image).save(split_dir / "images" / f"{image_id}_{split}.tif", compression="tiff_lzw")
    for folder, name, array in (
        ("1st_manual", f"{image_id}_manual1.gif", vessels),
        ("mask", f"{image_id}_{split}_mask.gif", fov),
    ):
        # optimize=False keeps the full greyscale palette, so the GIF reads back as mode "L" like DRIVE's
        Image.fromarray(array.astype(np.uint8) * 255).save(split_dir / folder / name, optimize=False)
    if split == "test":
        second = _rasterise(segments, DRIVE_SHAPE, SECOND_OBSERVER_MIN_WIDTH) & fov
        indices = Image.frombytes("P", (DRIVE_SHAPE[1], DRIVE_SHAPE[0]), second.astype(np.uint8).tobytes())
        indices.putpalette(SECOND_OBSERVER_PALETTE)
        indices.save(split_dir / "2nd_manual" / f"{image_id}_manual2.gif")


def write_synthetic_drive(root: str | Path, n_training: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """Write synthetic retinas into ``root`` in DRIVE's layout, names and file formats; return ``root``.

    Test ids are 01..n_test and training ids follow, as in DRIVE (test 01-20, training 21-40); the sample with
    id number ``k`` is generated from seed ``seed * 100_003 + k``. Images are LZW
    TIFFs; 1st_manual and masks greyscale GIFs with {0, 255}; test/2nd_manual palette GIFs with indices {0, 1}
    drawn without the thinnest vessels (a less thorough observer). The tree is built in a temporary folder
    beside ``root`` and moved into place at the end, so ``root`` is either complete or untouched; ``root``
    must not exist or be an empty folder.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty folder; refusing to write synthetic DRIVE there")
    with atomic_folder(root) as staging:
        ids = {"test": range(1, n_test + 1), "training": range(n_test + 1, n_test + n_training + 1)}
        for split, split_ids in ids.items():
            for folder in ("images", "1st_manual", "mask") + (("2nd_manual",) if split == "test" else ()):
                (staging / split / folder).mkdir(parents=True)
            for number in split_ids:
                _write_drive_sample(staging / split, split, f"{number:02d}", seed * 100_003 + number)
    return root


def write_synthetic_folder(root: str | Path, count: int, height: int = 584, width: int = 565, seed: int = 0,
                           image_format: str = "png") -> Path:
    """Write ``count`` synthetic retinas as a plain labelled folder, the layout of a user's own photographs:
    ``root/images/retina<k>.<image_format>`` (RGB; "png" or "jpg"), ``root/labels/retina<k>.png`` and
    ``root/masks/retina<k>.png`` ({0, 255} greyscale). Retina ``k`` is :func:`synthetic_retina` of seed
    ``seed * 100_003 + k``. ``root`` is complete or untouched, and must not exist or be an empty folder."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty folder; refusing to write a labelled folder there")
    with atomic_folder(root) as staging:
        for folder in ("images", "labels", "masks"):
            (staging / folder).mkdir()
        for k in range(count):
            image, vessels, fov = synthetic_retina(seed * 100_003 + k, height, width)
            Image.fromarray(image).save(staging / "images" / f"retina{k}.{image_format}")
            Image.fromarray(vessels * 255).save(staging / "labels" / f"retina{k}.png")
            Image.fromarray(fov * 255).save(staging / "masks" / f"retina{k}.png")
    return root


def synthetic_volume(
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 48),
    spacing: tuple[float, float, float] = (0.8, 0.8, 1.5),
    origin: tuple[float, float, float] = (-25.0, -30.0, 12.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 3D volume of bright curved tubes on a noisy background with their exact label.

    Returns (volume float32 ``shape``, label uint8 ``shape`` in {0, 1}, affine float64 (4, 4)). The affine maps
    voxel indices to millimetres with the given per-axis ``spacing`` and ``origin`` (world position of voxel 0).
    """
    rng = np.random.default_rng(seed)
    size = np.array(shape, dtype=float)
    label = np.zeros(shape, dtype=bool)
    t = np.linspace(0.0, 1.0, 4 * int(size.max()))[:, None]
    for _ in range(rng.integers(3, 6)):
        # A quadratic Bezier curve between two points on opposite faces, bent through a random interior point.
        axis = rng.integers(3)
        start, end = rng.uniform(0.15, 0.85, size=3) * size, rng.uniform(0.15, 0.85, size=3) * size
        start[axis], end[axis] = 0.0, size[axis] - 1
        bend = rng.uniform(0.2, 0.8, size=3) * size
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        centreline = np.ones(shape, dtype=bool)
        index = np.clip(np.round(curve).astype(int), 0, np.array(shape) - 1)
        centreline[tuple(index.T)] = False
        label |= ndimage.distance_transform_edt(centreline) <= rng.uniform(1.5, 3.5)
    volume = 0.2 + 0.6 * ndimage.gaussian_filter(label.astype(np.float32), 0.7)
    volume += 0.05 * resize(rng.uniform(-1, 1, size=(4, 4, 4)), shape, order=3, mode="reflect")
    volume += rng.normal(0.0, 0.04, size=shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return volume.astype(np.float32), label.astype(np.uint8), affine


def write_synthetic_volumes(
    root: str | Path, n: int = 4, shape: tuple[int, int, int] = (64, 64, 48), seed: int = 0
) -> list[dict[str, str]]:
    """Write ``n`` synthetic volumes as NIfTI pairs ``root/images/case_NNN.nii.gz`` + ``root/labels/...``.

    Each file carries the volume's affine (sform and qform). Files are written to a temporary name and moved
    into place. Volume ``i`` is ``synthetic_volume(seed * 100_003 + i, shape)``. Returns the records
    ``[{"id", "image", "label"}]``.
    """
    root = Path(root)
    records = []
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n):
        volume, label, affine = synthetic_volume(seed * 100_003 + index, shape)
        record = {"id": f"case_{index:03d}"}
        for key, folder, array in (("image", "images", volume), ("label", "labels", label)):
            nifti = nib.Nifti1Image(array, affine)
            nifti.set_qform(affine, code=1)
            nifti.set_sform(affine, code=1)
            path = root / folder / f"{record['id']}.nii.gz"
            with atomic_path(path) as temporary:
                nib.save(nifti, temporary)
            record[key] = str(path)
        records.append(record)
    return records


def default_synthetic_root(seed: int = 0) -> Path:
    """Where ``--dataset synthetic`` keeps its generated DRIVE-layout data when no root is given.

    ``$MEDSEG_CACHE`` if set, else ``$XDG_CACHE_HOME/medseg`` (default ``~/.cache/medseg``), plus
    ``synthetic-drive-seed<seed>``.
    """
    cache = os.environ.get("MEDSEG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medseg"
    return Path(cache) / f"synthetic-drive-seed{seed}"


def ensure_synthetic_drive(
    root: str | Path | None = None, n_training: int = 20, n_test: int = 20, seed: int = 0
) -> Path:
    """Return a synthetic DRIVE folder, generating it first if ``root`` is absent or an empty folder.

    An existing non-empty ``root`` is returned as is (it is then read and validated like real DRIVE data).
    ``root=None`` uses :func:`default_synthetic_root`.
    """
    root = Path(root) if root is not None else default_synthetic_root(seed)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        write_synthetic_drive(root, n_training=n_training, n_test=n_test, seed=seed)
    return root
