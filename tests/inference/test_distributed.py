"""Inference over several processes: the inputs are sharded over the ranks, each reported once."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medseg.inference import InferenceSettings, LoadedModel, infer_files
from medseg.networks import UNet

NETWORK_KWARGS = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": [4, 8]}


def photographs(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (24, 30, 3), dtype=np.uint8)
        paths.append(folder / f"photo{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_each_input_is_predicted_by_exactly_one_rank_and_a_clash_is_reported_once(tmp_path):
    torch.manual_seed(0)
    network = UNet(**NETWORK_KWARGS).eval()
    inputs = photographs(tmp_path / "a", 5)
    (tmp_path / "b").mkdir()
    clash = tmp_path / "b" / "photo3.png"  # same name as a/photo3.png: same outputs
    clash.write_bytes(inputs[3].read_bytes())
    settings = InferenceSettings(roi_size=(16, 16))
    summaries = [infer_files(LoadedModel(network, settings), [tmp_path / "a", clash], tmp_path / "out",
                             progress=False, shard=(rank, 2)) for rank in (0, 1)]
    written = [set(summary.written) for summary in summaries]
    assert written[0].isdisjoint(written[1]) and written[0] | written[1] == set(inputs)
    failures = summaries[0].failures + summaries[1].failures
    assert len(failures) == 1 and failures[0].startswith("rank 1: ") and "another input of the same name" in failures[0]


def test_torchrun_with_two_gloo_processes_writes_every_input_and_reports_once(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save(UNet(**NETWORK_KWARGS).state_dict(), checkpoint)
    inputs = photographs(tmp_path / "photos", 7)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not a png")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medseg", "infer", str(checkpoint), "--network", "unet", "--network-kwargs", json.dumps(NETWORK_KWARGS),
        "--roi", "16", str(tmp_path / "photos"), "-o", str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0, result.stderr  # the broken file fails the job
    for path in inputs:
        assert (tmp_path / "out" / f"{path.stem}_mask.png").is_file()
    assert result.stdout.count("medseg infer: 7 input(s) written to") == 1
    assert re.search(r"1 failed, in \d+\.\d s by 2 processes", result.stdout)
    broken = [line for line in result.stderr.splitlines() if "broken.png" in line and "failed:" in line]
    assert len(broken) == 1 and "rank " in broken[0], result.stderr
