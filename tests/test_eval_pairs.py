"""`evaluate pairs`: the verification AUC against hand-counted cases, the pair list's refusals, and
the command end to end with a tiny network on the bundled photo (copies, a mirror, no face)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ringnet_tf.evaluate import pairs as P
from ringnet_tf.evaluate.__main__ import main

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"


def test_auc_counts_same_person_pairs_closer_than_different_ones_ties_half():
    assert P.verification_auc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert P.verification_auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert P.verification_auc([0.0, 0.0], [0.0, 0.0, 0.0]) == 0.5  # shapes without identity
    # 1 < 2 and 1 < 3; 2 == 2 (half); 2 < 3: (1 + 1 + 0.5 + 1) / 4
    assert P.verification_auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(3.5 / 4)


def test_rms_distance_is_in_millimetres():
    a = np.zeros((4, 3))
    b = a + [0.003, 0.0, 0.004]  # every vertex 5 mm away
    assert P.rms_distance_mm(a, b) == pytest.approx(5.0)


@pytest.mark.parametrize("text, message", [
    ("a,b,Decision\nx.jpg,y.jpg\n", r":2: expected image_a,image_b,decision; got 2 column"),
    ("a,b,Decision\nx.jpg,y.jpg,maybe\n", r":2: decision 'maybe' is neither"),
    ("a,b,Decision\nx.jpg,y.jpg,Yes\nx.jpg,z.jpg,yes\n", r"needs both same-person and different-person pairs \(2 same of 2\)"),
    ("x.jpg,y.jpg,Yes\nx.jpg,z.jpg,No\n", r":1: the first row is a pair; the list needs a header row"),
    ("a,b,d\nx.jpg,,Yes\n", r":2: an image name is empty"),
    ("a,b,d\nx.jpg,./x.jpg,Yes\n", r":2: x.jpg is paired with itself"),
    ("a,b,d\nx.jpg,y.jpg,Yes\nz.jpg,x.jpg,No\ny.jpg,x.jpg,No\n", r":4: y.jpg,x.jpg is marked different here and same on line 2"),
])
def test_a_bad_pair_list_is_refused_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(P.PairsError, match=message) as e:
        P.read_pairs(path)
    assert str(path) in str(e.value)


def test_pair_list_reads_the_common_decision_spellings_and_counts_repeats_once(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("file_x,file_y,Decision,score\na.jpg, b.jpg ,Yes,0.2\n\nc.jpg,d.jpg,no,0.9\ne.jpg,f.jpg,1,0\n"
                    "g.jpg,h.jpg,different,1\nb.jpg,./a.jpg,same,0.3\n")
    assert P.read_pairs(path) == ([P.Pair("a.jpg", "b.jpg", True), P.Pair("c.jpg", "d.jpg", False),
                                   P.Pair("e.jpg", "f.jpg", True), P.Pair("g.jpg", "h.jpg", False)], 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_demo_root):
    """The bundled photo twice (byte copies), mirrored, shifted by a border, and a blank image."""
    pytest.importorskip("dlib")
    root = tmp_path_factory.mktemp("pairs")
    shutil.copy(PHOTO, root / "a.jpg")
    shutil.copy(PHOTO, root / "a_copy.jpg")
    img = cv2.imread(str(PHOTO))
    cv2.imwrite(str(root / "mirror.png"), img[:, ::-1])
    cv2.imwrite(str(root / "border.png"), cv2.copyMakeBorder(img, 40, 0, 25, 0, cv2.BORDER_REFLECT))
    cv2.imwrite(str(root / "blank.png"), np.full((200, 200, 3), 128, np.uint8))
    # The byte copies are the only same-person pair that must come out at distance 0.
    (root / "pairs.csv").write_text("file_x,file_y,Decision\na.jpg,a_copy.jpg,Yes\na.jpg,mirror.png,No\n"
                                    "a_copy.jpg,border.png,No\nborder.png,mirror.png,Yes\na.jpg,blank.png,No\n")
    return root


def _cli(tiny_demo_root, photos, *extra):
    return main(["pairs", "--checkpoint", str(tiny_demo_root / "ckpt"), "--flame_model",
                 str(tiny_demo_root / "flame"), "--images", str(photos), "--pairs", str(photos / "pairs.csv"),
                 "--quiet", *extra])


def test_the_command_ranks_identical_photos_first_and_leaves_out_photos_without_a_face(
        tiny_demo_root, photos, tmp_path, capsys):
    from flame.io import load_flame
    from flame.layer import FlameLayer
    from ringnet_tf import demo_lib, preprocess
    from ringnet_tf.inference import load_predictor

    out = tmp_path / "result.json"
    assert _cli(tiny_demo_root, photos, "--fit_steps", "30", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["photos"] == 5 and list(report["photos_left_out"]) == ["blank.png"]
    assert (report["pairs"], report["pairs_used"], report["same_pairs"], report["different_pairs"]) == (5, 4, 2, 2)
    assert set(report["methods"]) == {"network", "refined"}
    assert "4 of 5 pairs used (2 same, 2 different); 1 of 5 photos left out" in capsys.readouterr().out

    # An independent decoding of two network distances: the crop through the predictor, the
    # neutral mesh through a fresh FlameLayer.
    predictor = load_predictor(tiny_demo_root / "ckpt", str(tiny_demo_root / "flame"))
    detector = demo_lib.Detector()
    layer = FlameLayer(load_flame(tiny_demo_root / "flame"), 10, 5)
    neutral = {}
    for name in ("a.jpg", "a_copy.jpg", "mirror.png", "border.png"):
        crop = demo_lib.prepare_face(preprocess.read_image(photos / name), detector, predictor.image_size)["crop"]
        shape = predictor.predict(crop[None])["shape"]
        neutral[name] = layer(shape, np.zeros((1, 5), np.float32), np.zeros((1, 6), np.float32))["vertices"][0].numpy()
    d = {k: P.rms_distance_mm(neutral[a], neutral[b]) for k, (a, b) in
         {"copy": ("a.jpg", "a_copy.jpg"), "mirror": ("a.jpg", "mirror.png"),
          "border": ("a_copy.jpg", "border.png"), "bm": ("border.png", "mirror.png")}.items()}
    assert d["copy"] == 0.0 and min(d["mirror"], d["border"], d["bm"]) > 0
    net = report["methods"]["network"]
    assert [row[:3] for row in net["distances_mm"]] == [["a.jpg", "a_copy.jpg", True], ["a.jpg", "mirror.png", False],
                                                       ["a_copy.jpg", "border.png", False], ["border.png", "mirror.png", True]]
    np.testing.assert_allclose([row[3] for row in net["distances_mm"]],
                               [d["copy"], d["mirror"], d["border"], d["bm"]], rtol=1e-4, atol=1e-6)
    assert net["same_median_mm"] == pytest.approx(np.median([d["copy"], d["bm"]]), rel=1e-4)
    assert net["different_mean_mm"] == pytest.approx((d["mirror"] + d["border"]) / 2, rel=1e-4)
    # The copies (distance 0) are closer than both different-person pairs: half the AUC's comparisons.
    assert net["auc"] == pytest.approx(0.5 + 0.5 * np.mean([d["bm"] < d["mirror"], d["bm"] < d["border"]]))
    # Byte copies are refined from the same start the same way: their shapes stay together, while
    # refinement moved the shapes of the others.
    refined = report["methods"]["refined"]["distances_mm"]
    assert refined[0][3] < 1e-3 and refined[1][3] != pytest.approx(d["mirror"], rel=1e-3)


def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(tiny_demo_root, photos, tmp_path, capsys):
    out = tmp_path / "result.json"
    out.write_text("mine")
    assert _cli(tiny_demo_root, photos, "--network_only", "--out", str(out)) == 2
    assert out.read_text() == "mine" and "exists; use --force" in capsys.readouterr().err
    new = tmp_path / "new.json"
    listed = tmp_path / "pairs.csv"
    listed.write_text("x,y,d\na.jpg,gone.jpg,Yes\na.jpg,a_copy.jpg,No\n")
    cases = [
        (["--pairs", str(listed)], f"gone.jpg: listed in {listed} but not found"),
        (["--fit_steps", "-1"], "--fit_steps must be >= 0"),
        # A SavedModel has no FLAME layer: refinement is refused before any photo is read.
        (["--checkpoint", str(tiny_demo_root / "sm")], "a SavedModel has no FLAME layer to refine with"),
    ]
    for extra, message in cases:
        code = _cli(tiny_demo_root, photos, "--out", str(new), *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and not new.exists(), extra
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
