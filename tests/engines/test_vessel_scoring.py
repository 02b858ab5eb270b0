"""Scoring DRIVE probability maps: FOV-pooled vessel metrics of whole images against their records."""

import numpy as np
import pytest

from medseg.data import drive_records, read_binary
from medseg.data.synthetic import ensure_synthetic_drive
from medseg.engines import pooled_vessel_metrics, second_observer_metrics


@pytest.fixture(scope="module")
def synthetic_test_records(tmp_path_factory):
    return drive_records(ensure_synthetic_drive(tmp_path_factory.mktemp("drive"), n_training=2, n_test=2), "test")


def test_the_labels_themselves_score_perfectly_in_either_layout(synthetic_test_records):
    labels = {r["id"]: read_binary(r["label"]).astype(np.float32) for r in synthetic_test_records}
    scores = pooled_vessel_metrics(labels, synthetic_test_records)
    assert scores["f1"] == pytest.approx(1.0) and scores["auc_roc"] == pytest.approx(1.0)
    channel_first = pooled_vessel_metrics({i: label[None] for i, label in labels.items()}, synthetic_test_records)
    assert channel_first == scores


def test_pixels_outside_the_fov_do_not_count(synthetic_test_records):
    labels = {r["id"]: read_binary(r["label"]).astype(np.float32) for r in synthetic_test_records}
    wrong_outside = {i: np.where(read_binary(r["mask"]) > 0, labels[i], 1.0 - labels[i])
                     for i, r in ((r["id"], r) for r in synthetic_test_records)}
    assert pooled_vessel_metrics(wrong_outside, synthetic_test_records)["f1"] == pytest.approx(1.0)


def test_a_map_of_another_size_is_named_with_its_label_file(synthetic_test_records):
    record = synthetic_test_records[0]
    with pytest.raises(ValueError, match=f"{record['id']}: probabilities of shape \\(3, 4\\), but {record['label']}"):
        pooled_vessel_metrics({record["id"]: np.zeros((3, 4))}, synthetic_test_records)


def test_the_second_observer_of_drive_scores_as_published(drive_root):
    """DRIVE's second observer against the first: F1 0.789, Se 0.775, Sp 0.973 over the 20 test images."""
    scores = second_observer_metrics(drive_records(drive_root, "test"))
    assert scores["f1"] == pytest.approx(0.789, abs=0.001)
    assert scores["sensitivity"] == pytest.approx(0.775, abs=0.001)
    assert scores["specificity"] == pytest.approx(0.973, abs=0.001)
    assert not any(name.startswith("auc") for name in scores)


def test_index_map_labels_score_by_their_vessel_values(synthetic_test_records, tmp_path):
    """LES-AV's labels are artery/vein index maps: with ``label_positive`` every named value is a vessel."""
    from PIL import Image

    records, labels = [], {}
    for record in synthetic_test_records:
        vessel = read_binary(record["label"])
        index_map = tmp_path / f"{record['id']}.png"
        Image.fromarray((vessel * np.where(np.arange(vessel.shape[1]) % 2, 1, 3)).astype(np.uint8)).save(index_map)
        records.append({**record, "label": str(index_map)})
        labels[record["id"]] = vessel.astype(np.float32)
    assert pooled_vessel_metrics(labels, records, label_positive=(1, 3))["f1"] == pytest.approx(1.0)
    assert pooled_vessel_metrics(labels, records, label_positive=(1,))["f1"] < 0.7
