"""Inference over several processes: the inputs are sharded over the ranks, each reported once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(commands: list[list[str]], timeout: float = 300) -> list[tuple[int | None, str]]:
    """``(exit code, stderr)`` of two gloo ranks started as a multi-node launcher starts them (``RANK``,
    ``WORLD_SIZE``, ``MASTER_*`` set; no torchrun agent that would stop one rank when the other fails), each with
    its own command line as two machines may see different files; ``None`` for a rank still running at
    ``timeout``, which is then killed."""
    port = free_port()
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
        **os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for rank, command in enumerate(commands)]
    deadline, results = time.monotonic() + timeout, []
    for process in processes:
        try:
            results.append((process.wait(max(1.0, deadline - time.monotonic())), process.stderr.read()))
        except subprocess.TimeoutExpired:
            results.append((None, ""))
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    return results


def infer_command(checkpoint: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "medseg", "infer", str(checkpoint), "--network", "unet", "--network-kwargs",
            json.dumps(NETWORK_KWARGS), "--roi", "16", *arguments]


def test_an_error_on_one_rank_ends_every_rank_naming_it_instead_of_leaving_the_others_waiting(tmp_path):
    checkpoint, broken = tmp_path / "model.pt", tmp_path / "elsewhere" / "model.pt"
    torch.save(UNet(**NETWORK_KWARGS).state_dict(), checkpoint)
    broken.parent.mkdir()
    broken.write_bytes(b"a truncated copy")  # the second machine's copy of the weights
    photographs(tmp_path / "photos", 2)
    arguments = (str(tmp_path / "photos"), "-o", str(tmp_path / "out"))
    results = run_two_ranks([infer_command(checkpoint, *arguments), infer_command(broken, *arguments)])
    assert all(code is not None for code, _ in results), "a rank was still waiting"
    for code, stderr in results:
        assert code == 1
        assert re.search(rf"rank 1: .*{re.escape(str(broken))}", stderr), stderr[-2000:]
        assert "Traceback" not in stderr


def test_the_inputs_are_listed_once_by_rank_0_so_a_folder_that_changes_cannot_split_them_differently(tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(UNet(**NETWORK_KWARGS).state_dict(), checkpoint)
    inputs = photographs(tmp_path / "photos", 3)
    # the second rank sees the folder after outputs were written into it: a list of its own would shard otherwise
    seen_later = tmp_path / "photos_later"
    seen_later.mkdir()
    for path in [*inputs, tmp_path / "photos" / "photo0_mask.png"]:
        (seen_later / path.name).write_bytes(inputs[0].read_bytes())
    out = tmp_path / "out"
    results = run_two_ranks([infer_command(checkpoint, str(tmp_path / "photos"), "-o", str(out)),
                             infer_command(checkpoint, str(seen_later), "-o", str(out))])
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert sorted(path.name for path in out.iterdir() if path.name.endswith("_mask.png")) == [
        f"{path.stem}_mask.png" for path in inputs]
