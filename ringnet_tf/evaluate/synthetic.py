"""The synthetic benchmark: 3D shape error where the true face is known.

On a synthetic dataset (`ringnet_tf.data.synthetic`, made with another seed than the training
data, so its identities are unseen), each image's predicted neutral mesh (FLAME(shape, 0, 0)) is
measured against the identity's true neutral mesh exactly as NoW measures a scan: the truth is
cropped by NoW's rule around its 7 landmarks, the prediction aligned by a similarity on the 7
landmarks then refined against the scan-to-mesh distance, and every cropped true vertex's distance
to the predicted surface is pooled (mm). Also the 68-landmark error in the image against the true
landmarks, normalised by the outer-eye-corner distance (NME).

For the network, two diagnostics of its shape coefficients (what decides whether it learnt
identity at all): `shape_correlation`, the mean over the first 10 coefficients of the Pearson
correlation between predicted and true values across images (1: tracks the truth; ~0: no
identity), and `identity_spread`, the within-identity over the between-identity variance of the
predicted coefficients (0: every image of a person gets the same shape; about n - 1 with n
images per person when the predictions ignore identity altogether).

Rows, measured in the same run:
- network; mean shape (every identity coefficient zero: the head model's template);
- landmark fitting: FLAME fitted to the image's true 68 landmarks (`ringnet_tf.refine`) starting
  from the network's mean parameters, no network involved;
- network + refinement: the same fitting started from the network's prediction (what
  `demo.py --refine N` does with detected landmarks; here the landmarks are exact);
- shared shape xK: network + refinement with one shape per K images of a person (the images of
  each identity in manifest order, in consecutive groups of K; rows only for K up to the number of
  images per identity), outliers left out by refine's rule (`excluded` counts them);
- the same refinement rows ", noisy": the true landmarks perturbed by `DLIB_NOISE`, the measured
  noise of dlib's detector on these renders (`perturb_landmarks`, seeded), so the rows say what
  refinement does with a real detector's errors. NME is always against the exact landmarks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from flame import constants as C
from ringnet_tf.evaluate import now

if TYPE_CHECKING:
    import argparse

    from flame.layer import FlameLayer
    from ringnet_tf.inference import Predictor
    from ringnet_tf.params import ParamSpec

OUTER_EYE_CORNERS = (36, 45)  # iBUG indices: the NME's normaliser
CORRELATED_COMPONENTS = 10  # leading shape coefficients in shape_correlation
METHODS = ("network", "mean shape", "landmark fitting", "network + refinement")
SHARED_SIZES = (2, 4, 8)
NOISE_SEED = 0

# ----------------------------------------------------------------------------------------------
# The detector-noise model
#
# dlib's 68 landmarks (`ringnet_tf.data.landmarks_dlib.DlibLandmarker`, mirror-averaged points)
# against the true landmarks, on synthetic renders at the generator's 256 px, in units of the face
# size S (the larger side of the true 68 points' bounding box). Measured with
#     python -m ringnet_tf.data.synthetic --out /tmp/noise3 --identities 50 --images-per-identity 8 --seed 3
#     python bench/shared_shape.py --measure-noise /tmp/noise3
# (`measure_detector_noise`): 221 of 400 images detected (dlib's frontal HOG detector finds 85 %
# of the faces within 15 degrees of yaw, 81 % at 15-30, 47 % at 30-45, 7 % beyond); of those, 7
# (3.2 %) are gross failures (median landmark error > GROSS_ERROR). On the others, each landmark's
# error minus its median over images (dlib's systematic offset from FLAME's landmark definition,
# not modelled: 0.044 S on the jaw contour, 0.036 on the brows, 0.013-0.018 elsewhere) is a
# Gaussian core (sigma per coordinate, 1.4826 MAD, per region below) plus heavy tails: 6.5 % of
# landmarks lie beyond 4 sigma of their region, with an RMS of 0.11 S per coordinate. The gross
# failures are shifted as a whole by 0.17 S (RMS per coordinate) and spread by 0.12 S around that.
# Errors grow with yaw (RMS 0.036 S below 15 degrees, 0.056 S at 30-45), not modelled either.
#
# The model (`perturb_landmarks`, fields of `NoiseModel`): each coordinate gets
# N(0, (sigma[region] S)^2); with probability outlier_rate a landmark gets N(0, (outlier_sigma
# S)^2) instead; with probability gross_rate an image is a gross failure: all its landmarks shift
# by one N(0, (gross_shift S)^2) offset and each moves by N(0, (gross_sigma S)^2) more. The
# confidence column is kept. Applied to every image, also those the detector would not find.
GROSS_ERROR = 0.15
NOISE_REGIONS = {"contour": range(0, 17), "brows": range(17, 27), "nose": range(27, 36),
                 "eyes": range(36, 48), "mouth": range(48, 68)}


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """A detector's landmark noise, in face sizes (see the section comment above)."""

    sigma: dict[str, float]  # per region, per coordinate
    outlier_rate: float
    outlier_sigma: float
    gross_rate: float
    gross_shift: float
    gross_sigma: float

    def sigma_per_landmark(self) -> np.ndarray:
        """[68] the Gaussian core's sigma of each landmark."""
        out = np.zeros(C.NUM_LANDMARKS)
        for region, idx in NOISE_REGIONS.items():
            out[list(idx)] = self.sigma[region]
        return out


DLIB_NOISE = NoiseModel(
    sigma={"contour": 0.042, "brows": 0.017, "nose": 0.017, "eyes": 0.017, "mouth": 0.020},
    outlier_rate=0.065, outlier_sigma=0.11, gross_rate=0.032, gross_shift=0.17, gross_sigma=0.12)


def landmark_face_size(points: np.ndarray) -> np.ndarray:
    """[..., 68, 2+] -> [...]: the larger side of the points' bounding box (the noise model's S)."""
    xy = np.asarray(points)[..., :2]
    return (xy.max(axis=-2) - xy.min(axis=-2)).max(axis=-1)


def perturb_landmarks(landmarks: np.ndarray, seed: int = NOISE_SEED,
                      model: NoiseModel = DLIB_NOISE) -> np.ndarray:
    """True landmarks as the detector would give them: [N, 68, 3] (x, y, conf) -> [N, 68, 3].

    Seeded: the same seed and input give the same output. The face size of each image is taken from
    its own (true) landmarks.
    """
    lm = np.asarray(landmarks, np.float64)
    n = lm.shape[0]
    rng = np.random.default_rng(seed)
    size = landmark_face_size(lm)[:, None, None]
    core = rng.standard_normal((n, C.NUM_LANDMARKS, 2)) * model.sigma_per_landmark()[None, :, None]
    wild = rng.standard_normal((n, C.NUM_LANDMARKS, 2)) * model.outlier_sigma
    is_outlier = rng.random((n, C.NUM_LANDMARKS)) < model.outlier_rate
    noise = np.where(is_outlier[..., None], wild, core)
    gross = rng.random(n) < model.gross_rate
    shift = rng.standard_normal((n, 1, 2)) * model.gross_shift
    extra = rng.standard_normal((n, C.NUM_LANDMARKS, 2)) * model.gross_sigma
    noise = noise + gross[:, None, None] * (shift + extra)
    out = lm.copy()
    out[..., :2] += size * noise
    return out.astype(np.float32)


def noise_statistics(errors: np.ndarray) -> dict[str, Any]:
    """The model's statistics of relative landmark errors: [N, 68, 2] (error / face size) ->
    {gross_rate, sigma per region, outlier_rate, outlier_sigma, bias per region, gross_shift,
    gross_sigma} as defined in the section comment above."""
    errors = np.asarray(errors, np.float64)
    radius = np.linalg.norm(errors, axis=-1)
    gross = np.median(radius, axis=1) > GROSS_ERROR
    good = errors[~gross]
    bias = np.median(good, axis=0)  # [68, 2] systematic offsets
    resid = good - bias
    sigma, outliers, wild = {}, [], []
    for region, idx in NOISE_REGIONS.items():
        e = resid[:, list(idx)]
        s = float(1.4826 * np.median(np.abs(e)))
        sigma[region] = s
        out = np.linalg.norm(e, axis=-1) > 4 * s
        outliers.append(out.ravel())
        wild.append(e[out].ravel())
    outliers_all, wild_all = np.concatenate(outliers), np.concatenate(wild)
    bad = errors[gross]
    return {
        "images": int(len(errors)), "gross_rate": float(gross.mean()) if len(errors) else 0.0,
        "sigma": sigma,
        "outlier_rate": float(outliers_all.mean()) if outliers_all.size else 0.0,
        "outlier_sigma": float(np.sqrt(np.mean(wild_all ** 2))) if wild_all.size else 0.0,
        "bias": {r: float(np.linalg.norm(bias[list(i)], axis=-1).mean()) for r, i in NOISE_REGIONS.items()},
        "gross_shift": float(np.sqrt(np.mean(bad.mean(1) ** 2))) if len(bad) else 0.0,
        "gross_sigma": float((bad - bad.mean(1, keepdims=True)).std()) if len(bad) else 0.0,
    }


def _read_synthetic(data_dir: Path, limit: int | None, needs: str) -> tuple[list, dict[str, np.ndarray]]:
    """A synthetic dataset's first `limit` manifest records and its ground truth; ValueError when
    the truth lacks `needs` (then it is no synthetic dataset)."""
    from ringnet_tf.data import dataset as D

    records = D.read_manifest(data_dir)[:limit]
    gt = D.read_ground_truth(data_dir)
    if gt is None or needs not in gt:
        raise ValueError(f"{data_dir}: no ground truth: not a synthetic dataset")
    return records, gt


def measure_detector_noise(data_dir: str | Path, limit: int | None = None, landmarker=None,
                           log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Runs dlib's detector and predictor on a synthetic dataset's images and compares with the
    true landmarks. Returns `noise_statistics` of the detected images, plus the detection counts
    (`detected`, `total`) and the detection rate per 15-degree bin of |yaw| (`detection_by_yaw`).
    """
    from scipy.spatial.transform import Rotation

    from ringnet_tf import preprocess

    if landmarker is None:
        from ringnet_tf.data.landmarks_dlib import default_landmarker

        landmarker = default_landmarker()
    data_dir = Path(data_dir)
    records, gt = _read_synthetic(data_dir, limit, "pose")
    index = {str(k): i for i, k in enumerate(gt["image"])}
    errors, yaws, found = [], [], []
    for n, r in enumerate(records):
        rgb = preprocess.read_image(data_dir / r.image)
        rot = gt["pose"][index[str(r.image)], :3]
        yaws.append(abs(float(np.degrees(Rotation.from_rotvec(rot).as_euler("YXZ")[0]))))
        dets = landmarker.detect(rgb)
        found.append(bool(dets))
        if dets:
            points = landmarker.landmarks(rgb, dets[0]).points
            errors.append((points - r.landmarks[:, :2]) / landmark_face_size(r.landmarks))
        if (n + 1) % 50 == 0:
            log(f"  {n + 1}/{len(records)} images")
    stats = noise_statistics(np.asarray(errors).reshape(-1, C.NUM_LANDMARKS, 2))
    yaws_a, found_a = np.asarray(yaws), np.asarray(found)
    bins = {}
    for lo in range(0, 60, 15):
        m = (yaws_a >= lo) & (yaws_a < lo + 15) if lo < 45 else yaws_a >= lo
        bins[f"{lo}-{lo + 15}"] = float(found_a[m].mean()) if m.any() else None
    stats.update(detected=int(found_a.sum()), total=len(records), detection_by_yaw=bins)
    return stats


def format_noise(stats: dict[str, Any]) -> str:
    sig = ", ".join(f"{k} {v:.3f}" for k, v in stats["sigma"].items())
    bias = ", ".join(f"{k} {v:.3f}" for k, v in stats["bias"].items())
    yaw = ", ".join(f"{k}: {'-' if v is None else f'{v:.2f}'}"
                    for k, v in stats.get("detection_by_yaw", {}).items())
    lines = [f"detected {stats.get('detected', stats['images'])} of {stats.get('total', stats['images'])} "
             f"images (rate by |yaw| degrees: {yaw})",
             f"gross failures (median error > {GROSS_ERROR} face sizes): {stats['gross_rate']:.4f} "
             f"(shift {stats['gross_shift']:.3f}, spread {stats['gross_sigma']:.3f})",
             f"sigma per coordinate (face sizes): {sig}",
             f"outliers (> 4 sigma): rate {stats['outlier_rate']:.4f}, RMS {stats['outlier_sigma']:.3f}",
             f"systematic offset, not modelled (mean |median error|): {bias}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The benchmark


@dataclasses.dataclass
class MethodResult:
    distances_mm: list[np.ndarray] = dataclasses.field(default_factory=list)
    nme: list[float] = dataclasses.field(default_factory=list)
    pose_deg: list[float] = dataclasses.field(default_factory=list)
    excluded: int | None = None

    def summary(self) -> dict[str, Any]:
        pooled = np.concatenate(self.distances_mm) if self.distances_mm else np.zeros(0)
        out = now.error_statistics(pooled)
        out["nme"] = float(np.mean(self.nme)) if self.nme else None
        out["pose_deg"] = float(np.mean(self.pose_deg)) if self.pose_deg else None
        out["pose_deg_median"] = float(np.median(self.pose_deg)) if self.pose_deg else None
        out["images"] = len(self.distances_mm)
        if self.excluded is not None:
            out["excluded"] = self.excluded
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


def pose_error_deg(pred_rotvec: np.ndarray, true_rotvec: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between predicted and true global head rotations.

    pred_rotvec, true_rotvec: [N, 3] axis-angle -> [N]: the angle of R_pred^T R_true, in [0, 180].
    """
    from scipy.spatial.transform import Rotation

    rel = Rotation.from_rotvec(np.asarray(pred_rotvec, np.float64)).inv() * \
        Rotation.from_rotvec(np.asarray(true_rotvec, np.float64))
    return np.degrees(np.linalg.norm(rel.as_rotvec(), axis=-1))


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 68-landmark distance over the outer-eye-corner distance. pred [68, 2], truth [68, 2+]."""
    a, b = OUTER_EYE_CORNERS
    norm = np.linalg.norm(truth[a, :2] - truth[b, :2])
    return float(np.mean(np.linalg.norm(pred[:, :2] - truth[:, :2], axis=1)) / max(norm, 1e-9))


def person_groups(identities: list[str], size: int) -> np.ndarray:
    """[N] group ids: each identity's images (in the given order) in consecutive groups of `size`
    (the last one of an identity may be smaller)."""
    seen: dict[str, int] = {}
    keys = []
    for ident in identities:
        k = seen.get(ident, 0)
        seen[ident] = k + 1
        keys.append((ident, k // size))
    ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([ids[key] for key in keys], np.int64)


@dataclasses.dataclass
class BenchSet:
    """The network's predictions and the truth of a synthetic dataset, once (N images).

    params [N, P], shape [N, S], landmarks2d [N, 68, 2] (crop pixels): the network's;
    targets [N, 68, 3]: the true landmarks in crop pixels; identities: N labels;
    scans: the true neutral face of each image's identity, as NoW scans (one per identity, shared);
    true_shapes [N, S]; true_rotations [N, 3] axis-angle (None: not scored).
    """

    params: np.ndarray
    shape: np.ndarray
    landmarks2d: np.ndarray
    targets: np.ndarray
    identities: list[str]
    scans: list[now.CroppedScan]
    true_shapes: np.ndarray
    true_rotations: np.ndarray | None = None


def load_bench(predictor: Predictor, data_dir: str | Path, limit: int | None = None, batch_size: int = 8,
               log: Callable[[str], None] = lambda s: None) -> BenchSet:
    """Reads the dataset, runs the network on every image and builds the truth."""
    from ringnet_tf import preprocess
    from ringnet_tf.data import dataset as D

    data_dir = Path(data_dir)
    meta = D.read_meta(data_dir)
    records, gt = _read_synthetic(data_dir, limit, "neutral_vertices")
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
    size = predictor.image_size
    idx = np.asarray(keras_value(flame.static_tri))[list(C.NOW_LANDMARKS_IN_STATIC)]
    bary = np.asarray(keras_value(flame.static_bary))[list(C.NOW_LANDMARKS_IN_STATIC)]
    scans: dict[str, now.CroppedScan] = {}
    out: dict[str, list] = {"params": [], "shape": [], "landmarks2d": [], "targets": []}
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        crops = []
        for r in batch:
            img = preprocess.read_image(data_dir / r.image)
            box = preprocess.centre_box(*img.shape[:2])
            crops.append(preprocess.crop(img, box, size))
            # Truth landmarks in network-input pixels, by the crop's own map.
            out["targets"].append(preprocess.transform_points(r.landmarks, box.affine(size)))
            if r.identity not in scans:
                # The truth's 7 landmarks come from the same embedding as the predictions'.
                v = gt["neutral_vertices"][neutral_index[r.identity]].astype(np.float64)
                scans[r.identity] = _truth_scan(v, np.einsum("lkc,lk->lc", v[idx], bary))
        pred = predictor.predict(np.stack(crops))
        for k in ("params", "shape", "landmarks2d"):
            out[k].extend(pred[k])
        log(f"  network: {min(start + batch_size, len(records))}/{len(records)} images")
    num_shape = flame.num_shape
    stack = lambda k, w: (np.asarray(out[k], np.float32) if out[k]  # noqa: E731
                          else np.zeros((0, *w), np.float32))
    return BenchSet(params=stack("params", (predictor_spec(predictor).total,)),
                    shape=stack("shape", (num_shape,)), landmarks2d=stack("landmarks2d", (68, 2)),
                    targets=stack("targets", (68, 3)), identities=[r.identity for r in records],
                    scans=[scans[r.identity] for r in records],
                    true_shapes=np.asarray([gt["shape"][image_index[str(r.image)]] for r in records]),
                    true_rotations=np.asarray([gt["pose"][image_index[str(r.image)]][:3] for r in records]))


def predictor_spec(predictor: Predictor) -> ParamSpec:
    """The parameter layout of a predictor's network (from its FLAME layer)."""
    from ringnet_tf.params import ParamSpec

    return ParamSpec(predictor.flame_layer.num_shape, predictor.flame_layer.num_expression)


def score(bench: BenchSet, predictor: Predictor, shapes: np.ndarray, landmarks_px: np.ndarray | None = None,
          chunk: int = 64, params: np.ndarray | None = None) -> MethodResult:
    """The 3D error of neutral meshes FLAME(shapes [N, S]) (shapes [1, S]: the same for all),
    given landmarks_px [N, 68, 2] their NME against the true landmarks, and given params [N, P]
    the geodesic error of their global rotation."""
    res = MethodResult()
    n = len(bench.identities)
    for start in range(0, n, chunk):
        part = shapes[start:start + chunk] if len(shapes) > 1 else shapes
        mesh = predictor.neutral(np.asarray(part, np.float32))
        for i in range(start, min(start + chunk, n)):
            j = 0 if len(shapes) == 1 else i - start
            ev = now.evaluate_prediction(bench.scans[i], mesh["vertices"][j].astype(np.float64),
                                         predictor.faces, mesh["now_landmarks"][j].astype(np.float64))
            res.distances_mm.append(ev.distances_mm)
    if landmarks_px is not None:
        res.nme = [nme(landmarks_px[i], bench.targets[i]) for i in range(n)]
    if params is not None and n and bench.true_rotations is not None:
        rot = predictor_spec(predictor).split(params)["pose"][:, :3]
        res.pose_deg = pose_error_deg(rot, bench.true_rotations).tolist()
    return res


def fitted_landmarks_px(flame: FlameLayer, params: np.ndarray, size: int) -> np.ndarray:
    """[N, P] parameters -> [N, 68, 2] projected landmarks, crop pixels."""
    import tensorflow as tf

    from ringnet_tf.camera import normalised_to_pixels
    from ringnet_tf.model import decode

    normalised = decode(flame, tf.constant(params, tf.float32))["landmarks2d"].numpy()
    return normalised_to_pixels(normalised, size)


def evaluate_synthetic(predictor: Predictor, data_dir: str | Path, limit: int | None = None,
                       fit_steps: int | None = None, batch_size: int = 8,
                       log: Callable[[str], None] = lambda s: None,
                       shared_sizes: tuple[int, ...] = SHARED_SIZES, noisy: bool = True,
                       noise_seed: int = NOISE_SEED, refine_kwargs: dict[str, Any] | None = None,
                       network_only: bool = False) -> dict[str, dict[str, Any]]:
    """Runs the benchmark; returns {row: {median_mm, mean_mm, std_mm, nme, images[, excluded]}}.

    fit_steps: refinement's maximum steps (None: refine's default); refine_kwargs: more of
    `refine`'s keywords (for tuning). Shared-shape rows for K in shared_sizes (those up to the
    most images of one identity), and the noisy rows when `noisy`; `network_only`: the network
    and mean-shape rows alone.
    """
    from ringnet_tf.refine import DEFAULT_STEPS, refine

    bench = load_bench(predictor, data_dir, limit, batch_size, log)
    flame, size = predictor.flame_layer, predictor.image_size
    steps = DEFAULT_STEPS if fit_steps is None else fit_steps
    kwargs = dict(refine_kwargs or {})
    n = len(bench.identities)
    results: dict[str, MethodResult] = {}
    results["network"] = score(bench, predictor, bench.shape, bench.landmarks2d, params=bench.params)
    results["mean shape"] = score(bench, predictor, np.zeros((1, flame.num_shape), np.float32))
    log("  network and mean shape scored")

    def summarise() -> dict[str, dict[str, Any]]:
        summary = {name: res.summary() for name, res in results.items()}
        if n:
            summary["network"].update(shape_diagnostics(bench.shape, bench.true_shapes, bench.identities))
        return summary

    if network_only:
        return summarise()

    def fit(start: np.ndarray, targets: np.ndarray, groups=None) -> MethodResult:
        out = refine(flame, start, targets, size, steps, groups=groups, **kwargs)
        shapes = predictor_spec(predictor).split(out.params)["shape"]
        res = score(bench, predictor, shapes, fitted_landmarks_px(flame, out.params, size),
                    params=out.params)
        if groups is not None:
            res.excluded = int(out.excluded.sum())
        return res

    mean_theta = predictor_mean_params(predictor, predictor_spec(predictor))
    results["landmark fitting"] = fit(np.repeat(mean_theta[None], n, 0), bench.targets)
    most = max(np.unique(bench.identities, return_counts=True)[1]) if n else 0
    sizes = [k for k in shared_sizes if 1 < k <= most]
    variants = [("", bench.targets)]
    if noisy:
        variants.append((", noisy", perturb_landmarks(bench.targets, noise_seed)))
    for suffix, targets in variants:
        results["network + refinement" + suffix] = fit(bench.params, targets)
        for k in sizes:
            results[f"shared shape x{k}{suffix}"] = fit(bench.params, targets,
                                                        person_groups(bench.identities, k))
        log(f"  refinement rows{suffix or ', exact'} scored")
    return summarise()


def keras_value(variable: Any) -> np.ndarray:
    """A Keras variable's value as a NumPy array."""
    import keras

    return keras.ops.convert_to_numpy(variable)


def predictor_mean_params(predictor: Predictor, spec: ParamSpec) -> np.ndarray:
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
    lines = [f"{'method':30s} {'median':>8s} {'mean':>8s} {'std':>8s}  (mm)  {'NME':>7s}  "
             f"{'pose':>6s} (deg)  images"]
    for name, r in results.items():
        nme_text = f"{r['nme']:.4f}" if r["nme"] is not None else "      -"
        pose_text = f"{r['pose_deg']:6.2f}" if r.get("pose_deg") is not None else "     -"
        extra = f"  ({r['excluded']} excluded)" if r.get("excluded") else ""
        lines.append(f"{name:30s} {r['median_mm']:8.3f} {r['mean_mm']:8.3f} {r['std_mm']:8.3f}        "
                     f"{nme_text:>7s}  {pose_text}        {r['images']}{extra}")
    net = results.get("network", {})
    if "shape_correlation" in net:
        def fmt(v):
            return "-" if v is None else f"{v:.3f}"
        lines.append(f"network shape coefficients: correlation with the truth {fmt(net['shape_correlation'])} "
                     f"(first {CORRELATED_COMPONENTS}), within/between-identity spread "
                     f"{fmt(net['identity_spread'])}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`python -m ringnet_tf.evaluate synthetic` (parsed there); exit codes as `ringnet_tf.cli`."""
    import json
    import sys

    from flame.fileutil import atomic_write
    from flame.io import FlameFileError
    from ringnet_tf.cli import EXIT_OK, fail
    from ringnet_tf.data.dataset import DatasetError
    from ringnet_tf.inference import CheckpointError, load_predictor

    if args.out is not None and args.out.exists() and not args.force:
        return fail(f"{args.out}: exists; use --force to replace it")
    try:
        predictor = load_predictor(args.checkpoint, args.flame_model)
        log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        results = evaluate_synthetic(predictor, args.data, args.limit, args.fit_steps, log=log,
                                     network_only=getattr(args, "network_only", False))
    except (CheckpointError, FlameFileError, DatasetError, ValueError) as e:
        return fail(str(e))
    print(format_table(results))
    if args.out is not None:
        text = json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), "results": results},
                          indent=2)
        atomic_write(args.out, lambda f: f.write(text.encode()))
        print(f"results written to {args.out}")
    return EXIT_OK
