"""The synthetic benchmark: 3D shape error where the true face is known.

On a synthetic dataset (`ringnet_tf.data.synthetic`, made with another seed than the training
data, so its identities are unseen), each image's predicted neutral mesh (FLAME(shape, 0, 0)) is
measured against the identity's true neutral mesh exactly as NoW measures a scan: the truth is
cropped by NoW's rule around its 7 landmarks, the prediction aligned by a similarity on the 7
landmarks then refined against the scan-to-mesh distance, and every cropped true vertex's distance
to the predicted surface is pooled (mm). Also the 68-landmark error in the image, normalised by
the outer-eye-corner distance (NME).

For the network, two diagnostics of its shape coefficients (what decides whether it learnt
identity at all): `shape_correlation`, the mean over the first 10 coefficients of the Pearson
correlation between predicted and true values across images (1: tracks the truth; ~0: no
identity), and `identity_spread`, the within-identity over the between-identity variance of the
predicted coefficients (0: every image of a person gets the same shape; about n - 1 with n
images per person when the predictions ignore identity altogether).

Baselines, measured in the same run:
- mean shape: every identity coefficient zero (the head model's template);
- landmark fitting: FLAME fitted to the image's true 68 landmarks (`ringnet_tf.refine`) starting
  from the network's mean parameters, no network involved;
- network + refinement: the same fitting started from the network's prediction (what
  `demo.py --refine N` does with detected landmarks; here the landmarks are exact).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flame import constants as C
from ringnet_tf.evaluate import now

OUTER_EYE_CORNERS = (36, 45)  # iBUG indices: the NME's normaliser
CORRELATED_COMPONENTS = 10  # leading shape coefficients in shape_correlation
METHODS = ("network", "mean shape", "landmark fitting", "network + refinement")


@dataclasses.dataclass
class MethodResult:
    distances_mm: list[np.ndarray] = dataclasses.field(default_factory=list)
    nme: list[float] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        pooled = np.concatenate(self.distances_mm) if self.distances_mm else np.zeros(0)
        out = now.error_statistics(pooled)
        out["nme"] = float(np.mean(self.nme)) if self.nme else None
        out["images"] = len(self.distances_mm)
        return out


def _truth_scan(vertices_m: np.ndarray, now_landmarks_m: np.ndarray) -> now.CroppedScan:
    """A true neutral mesh as a NoW 'scan': millimetres, cropped by NoW's rule."""
    vertices, landmarks = 1000.0 * vertices_m, 1000.0 * now_landmarks_m
    centre, radius = now.crop_sphere(landmarks)
    mask = now.crop_mask(vertices, landmarks)
    return now.CroppedScan(points=vertices[mask], landmarks=landmarks, total_vertices=len(vertices),
                           centre=centre, radius=radius, scan_path=Path("<truth>"),
                           landmarks_path=Path("<truth>"))


def shape_diagnostics(pred: np.ndarray, truth: np.ndarray, identities: list[str],
                      components: int = CORRELATED_COMPONENTS) -> dict[str, float | None]:
    """pred, truth: [N, S] shape coefficients per image; identities: N labels.

    Returns {shape_correlation, identity_spread}; None where undefined (a constant coefficient,
    fewer than two identities, or no spread between identities).
    """
    k = min(components, pred.shape[1], truth.shape[1])
    rs = []
    for c in range(k):
        p, t = pred[:, c] - pred[:, c].mean(), truth[:, c] - truth[:, c].mean()
        denom = np.sqrt((p * p).sum() * (t * t).sum())
        if denom > 0:
            rs.append(float((p * t).sum() / denom))
    labels = np.asarray(identities)
    groups = [pred[labels == i] for i in dict.fromkeys(identities)]
    means = np.stack([g.mean(0) for g in groups])
    within = float(np.mean([((g - g.mean(0)) ** 2).sum(1).mean() for g in groups]))
    between = float(((means - means.mean(0)) ** 2).sum(1).mean()) if len(groups) > 1 else 0.0
    return {"shape_correlation": float(np.mean(rs)) if rs else None,
            "identity_spread": within / between if between > 0 else None}


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 68-landmark distance over the outer-eye-corner distance. pred [68, 2], truth [68, 2+]."""
    a, b = OUTER_EYE_CORNERS
    norm = np.linalg.norm(truth[a, :2] - truth[b, :2])
    return float(np.mean(np.linalg.norm(pred[:, :2] - truth[:, :2], axis=1)) / max(norm, 1e-9))


def evaluate_synthetic(predictor, data_dir: str | Path, limit: int | None = None,
                       fit_steps: int = 200, batch_size: int = 8,
                       log: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, Any]]:
    """Runs the benchmark; returns {method: {median_mm, mean_mm, std_mm, nme, images}}."""
    import tensorflow as tf

    from ringnet_tf import preprocess
    from ringnet_tf.data import dataset as D
    from ringnet_tf.params import ParamSpec
    from ringnet_tf.refine import refine

    data_dir = Path(data_dir)
    meta = D.read_meta(data_dir)
    records = D.read_manifest(data_dir)[:limit]
    gt = D.read_ground_truth(data_dir)
    if gt is None or "neutral_vertices" not in gt:
        raise ValueError(f"{data_dir}: no ground truth: not a synthetic dataset")
    flame = predictor.flame_layer
    if flame is None:
        raise ValueError("the synthetic benchmark needs a Keras checkpoint (it decodes through FLAME)")
    if meta.get("flame_fingerprint") not in (None, flame.fingerprint):
        raise ValueError(f"{data_dir} was rendered with head model {meta.get('flame_fingerprint')}; "
                         f"the checkpoint uses {flame.fingerprint}")
    neutral_index = {str(k): i for i, k in enumerate(gt["neutral_identity"])}
    # Ground-truth rows follow the manifest; matched by image name where the file records it.
    image_index = ({str(k): i for i, k in enumerate(gt["image"])} if "image" in gt
                   else {str(r.image): i for i, r in enumerate(records)})
    pred_shapes, true_shapes = [], []
    faces = predictor.faces
    size = predictor.image_size
    spec = ParamSpec(flame.num_shape, flame.num_expression)

    # The truth's 7 landmarks come from the same embedding as the predictions'.
    def now_landmarks_of(vertices: np.ndarray) -> np.ndarray:
        idx = np.asarray(keras_value(flame.static_tri))[list(C.NOW_LANDMARKS_IN_STATIC)]
        bary = np.asarray(keras_value(flame.static_bary))[list(C.NOW_LANDMARKS_IN_STATIC)]
        return np.einsum("lkc,lk->lc", vertices[idx], bary)

    zero_shape = np.zeros((1, flame.num_shape), np.float32)
    mean_mesh = predictor.neutral(zero_shape)
    results = {name: MethodResult() for name in METHODS}
    mean_theta = predictor_mean_params(predictor, spec)
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        crops, truths_px = [], []
        for r in batch:
            img = preprocess.read_image(data_dir / r.image)
            h, w = img.shape[:2]
            crops.append(preprocess.crop(img, preprocess.centre_box(h, w), size))
            # Truth landmarks in network-input pixels (the crop is the whole stored image).
            scale = np.array([size / w, size / h])
            truths_px.append(np.concatenate([(r.landmarks[:, :2] + 0.5) * scale - 0.5, r.landmarks[:, 2:]], 1))
        pred = predictor.predict(np.stack(crops))
        neutral = predictor.neutral(pred["shape"])
        targets = np.stack(truths_px).astype(np.float32)

        def fit(start_params: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
            """Refines against the true landmarks: (neutral meshes, landmarks in crop pixels)."""
            fitted, _ = refine(flame, start_params, targets, size, fit_steps)
            parts = spec.split(fitted)
            out = flame(*(tf.constant(parts[k], tf.float32) for k in ("shape", "expression", "pose")))
            return predictor.neutral(parts["shape"]), _project_px(out["landmarks"].numpy(), parts["cam"], size)

        fitted_neutral, fitted_px = fit(np.repeat(mean_theta[None], len(batch), 0))
        refined_neutral, refined_px = fit(np.asarray(pred["params"], np.float32))
        for i, r in enumerate(batch):
            truth_vertices = gt["neutral_vertices"][neutral_index[r.identity]].astype(np.float64)
            scan = _truth_scan(truth_vertices, now_landmarks_of(truth_vertices))
            for name, verts, lms in (
                    ("network", neutral["vertices"][i], neutral["now_landmarks"][i]),
                    ("mean shape", mean_mesh["vertices"][0], mean_mesh["now_landmarks"][0]),
                    ("landmark fitting", fitted_neutral["vertices"][i], fitted_neutral["now_landmarks"][i]),
                    ("network + refinement", refined_neutral["vertices"][i], refined_neutral["now_landmarks"][i])):
                ev = now.evaluate_prediction(scan, verts.astype(np.float64), faces, lms.astype(np.float64))
                results[name].distances_mm.append(ev.distances_mm)
            results["network"].nme.append(nme(pred["landmarks2d"][i], truths_px[i]))
            pred_shapes.append(pred["shape"][i])
            true_shapes.append(gt["shape"][image_index[str(r.image)]])
            results["landmark fitting"].nme.append(nme(fitted_px[i], truths_px[i]))
            results["network + refinement"].nme.append(nme(refined_px[i], truths_px[i]))
        log(f"  {min(start + batch_size, len(records))}/{len(records)} images")
    summary = {name: res.summary() for name, res in results.items()}
    if records:
        summary["network"].update(shape_diagnostics(np.stack(pred_shapes), np.stack(true_shapes),
                                                    [r.identity for r in records]))
    return summary


def _project_px(points: np.ndarray, cam: np.ndarray, size: int) -> np.ndarray:
    from ringnet_tf.camera import project

    return project(points, cam, size)


def keras_value(variable) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(variable)


def predictor_mean_params(predictor, spec) -> np.ndarray:
    """The network's starting ("mean") parameters, from its regressor; zeros with a default
    camera scale when the network has none."""
    net = getattr(predictor, "net", None)
    if net is not None:
        for layer in net.layers:
            if hasattr(layer, "mean_params_value"):
                return np.asarray(keras_value(layer.mean), np.float32)
    theta = np.zeros(spec.total, np.float32)
    theta[0] = 7.0
    return theta


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'method':20s} {'median':>8s} {'mean':>8s} {'std':>8s}  (mm)  {'NME':>7s}  images"]
    for name, r in results.items():
        nme_text = f"{r['nme']:.4f}" if r["nme"] is not None else "      -"
        lines.append(f"{name:20s} {r['median_mm']:8.3f} {r['mean_mm']:8.3f} {r['std_mm']:8.3f}        "
                     f"{nme_text:>7s}  {r['images']}")
    net = results.get("network", {})
    if "shape_correlation" in net:
        def fmt(v):
            return "-" if v is None else f"{v:.3f}"
        lines.append(f"network shape coefficients: correlation with the truth {fmt(net['shape_correlation'])} "
                     f"(first {CORRELATED_COMPONENTS}), within/between-identity spread "
                     f"{fmt(net['identity_spread'])}")
    return "\n".join(lines)


def main(args) -> int:
    import json

    from flame.fileutil import atomic_write
    from flame.io import FlameFileError
    from ringnet_tf.data.dataset import DatasetError
    from ringnet_tf.inference import CheckpointError, load_predictor

    if args.out is not None and args.out.exists() and not args.force:
        print(f"error: {args.out}: exists; use --force to replace it", file=sys.stderr)
        return 1
    try:
        predictor = load_predictor(args.checkpoint, args.flame_model)
        log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        results = evaluate_synthetic(predictor, args.data, args.limit, args.fit_steps, log=log)
    except (CheckpointError, FlameFileError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(results))
    if args.out is not None:
        text = json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), "results": results},
                          indent=2)
        atomic_write(args.out, lambda f: f.write(text.encode()))
        print(f"results written to {args.out}")
    return 0
