"""The dataset format: manifest and TFRecord forms hold the same data and round-trip exactly."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ringnet_tf.data import dataset as D


def _make_dataset(root, with_gt=True, seed=0):
    rng = np.random.default_rng(seed)
    records, gt_rows = [], []
    for ident in ("bob", "alice", "carol"):
        for k in range(3 if ident != "carol" else 2):
            name = f"images/{ident}/{k:03d}.{'png' if k % 2 else 'jpg'}"
            img = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), img)
            lm = np.concatenate([rng.uniform(0, 20, (68, 2)), rng.uniform(0, 1, (68, 1))], axis=1)
            records.append(D.Record(name, ident, np.round(lm, 3).astype(np.float32)))
            gt_rows.append(rng.normal(size=3 + 15 + 10 + 5))
    D.write_manifest(root, records)
    D.write_meta(root, {"source": "test"})
    if with_gt:
        g = np.array(gt_rows, np.float32)
        D.write_ground_truth(root, {
            "image": np.array([r.image for r in records]), "cam": g[:, :3], "pose": g[:, 3:18],
            "shape": g[:, 18:28], "expression": g[:, 28:],
            "neutral_identity": np.array(["alice", "bob", "carol"]),
            "neutral_vertices": rng.normal(size=(3, 7, 3)).astype(np.float32)})
    return records


def test_manifest_round_trip(tmp_path):
    records = _make_dataset(tmp_path)
    back = D.read_manifest(tmp_path)
    assert [(r.image, r.identity) for r in back] == [(r.image, r.identity) for r in records]
    np.testing.assert_allclose(np.stack([r.landmarks for r in back]),
                               np.stack([r.landmarks for r in records]), atol=5e-4)
    assert list(D.group_by_identity(back)) == ["alice", "bob", "carol"]


def test_tfrecord_round_trip_is_exact(tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    src.mkdir()
    _make_dataset(src)
    tfr = D.write_tfrecords(src, num_shards=2)
    assert len(D.tfrecord_files(tfr)) == 2
    # One example per identity, with all its images.
    examples = list(D.iterate_tfrecords(tfr))
    assert sorted(e["identity"].decode() for e in examples) == ["alice", "bob", "carol"]
    assert {e["identity"].decode(): len(e["image"]) for e in examples} == {"alice": 3, "bob": 3, "carol": 2}
    D.tfrecords_to_directory(tfr, back)
    assert (back / D.MANIFEST_NAME).read_bytes() == (src / D.MANIFEST_NAME).read_bytes()
    for r in D.read_manifest(src):
        assert (back / r.image).read_bytes() == (src / r.image).read_bytes()
    gt_src, gt_back = D.read_ground_truth(src), D.read_ground_truth(back)
    assert sorted(gt_src) == sorted(gt_back)
    for key in gt_src:
        np.testing.assert_array_equal(gt_back[key], gt_src[key], err_msg=key)
    assert D.read_meta(back)["source"] == "test"


def test_tfrecords_refuse_to_overwrite(tmp_path):
    _make_dataset(tmp_path, with_gt=False)
    D.write_tfrecords(tmp_path)
    with pytest.raises(D.DatasetError, match="already holds TFRecord shards"):
        D.write_tfrecords(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not ours")
    with pytest.raises(D.DatasetError, match="not an empty folder"):
        D.write_tfrecords(tmp_path, tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_tfrecords_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    _make_dataset(src)
    real = Path.read_bytes
    reads = []

    def failing_read(path):  # the third image cannot be read: the run stops half-way
        reads.append(path)
        if len(reads) == 3:
            raise OSError("input/output error")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    with pytest.raises(OSError, match="input/output error"):
        D.write_tfrecords(src, tmp_path / "tfr", num_shards=2)
    monkeypatch.setattr(Path, "read_bytes", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no folder, no staging left
    tfr = D.write_tfrecords(src, tmp_path / "tfr", num_shards=2)  # and the next run succeeds
    assert len(D.tfrecord_files(tfr)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tfr"]


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.replace("image,identity", "img,identity"), "header"),
    (lambda t: t.rstrip("\n") + ",1\n", "columns"),
    (lambda t: t.replace("images/bob/000.jpg", "images/bob/nope.jpg"), "does not exist"),
])
def test_bad_manifests_name_file_and_line(tmp_path, mutate, message):
    _make_dataset(tmp_path, with_gt=False)
    path = tmp_path / D.MANIFEST_NAME
    path.write_text(mutate(path.read_text()))
    with pytest.raises(D.DatasetError, match=message) as err:
        D.read_manifest(tmp_path)
    assert "manifest.csv" in str(err.value) and "\n" not in str(err.value)


def test_confidence_out_of_range_is_refused(tmp_path):
    records = _make_dataset(tmp_path, with_gt=False)
    bad = records[0].landmarks.copy()
    bad[0, 2] = 1.5
    D.write_manifest(tmp_path, [D.Record(records[0].image, "bob", bad)])
    with pytest.raises(D.DatasetError, match="line 2: .*confidences"):
        D.read_manifest(tmp_path)
