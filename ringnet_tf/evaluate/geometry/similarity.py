"""Similarity transforms (x -> s R x + t) and their least-squares fit to corresponding points."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation.

    Attributes:
      scale: positive float.
      rotation: `[3, 3] float64`, orthonormal, det +1 (unless a reflection was allowed).
      translation: `[3] float64`.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """`[N, 3]` -> `[N, 3]`."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def inverse_apply(self, points: np.ndarray) -> np.ndarray:
        """The inverse map, `[N, 3]` -> `[N, 3]`."""
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale

    def then(self, outer: "Similarity") -> "Similarity":
        """The similarity applying self first, then `outer`."""
        return Similarity(outer.scale * self.scale, outer.rotation @ self.rotation,
                          outer.scale * outer.rotation @ self.translation + outer.translation)

    def as_dict(self) -> dict:
        return {"scale": float(self.scale), "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def fit_similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None,
                   with_scale: bool = True, allow_reflection: bool = False) -> Similarity:
    """Least-squares similarity mapping source onto target (Umeyama 1991).

    Minimises sum_i w_i |s R source_i + t - target_i|^2.

    Args:
      source, target: `[N, 3]` corresponding points, N >= 3 and not all collinear for a unique
        rotation.
      weights: optional `[N]` non-negative weights.
      with_scale: fit the scale (else 1).
      allow_reflection: allow det R = -1 (a mirrored fit); off by default, since a mirrored face
        is a wrong face, not an alignment.
    Returns:
      The Similarity.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"source and target must both be [N, 3], got {source.shape}, {target.shape}")
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(source),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be [N], non-negative, not all zero")
    w = w / w.sum()
    mu_s = w @ source
    mu_t = w @ target
    xs = source - mu_s
    xt = target - mu_t
    covariance = (xt * w[:, None]).T @ xs  # [3, 3], target x source
    u, sigma, vt = np.linalg.svd(covariance)
    signs = np.ones(3)
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[2] = -1.0
    rotation = (u * signs) @ vt
    variance = float(w @ np.einsum("ij,ij->i", xs, xs))
    if variance <= 0.0:
        raise ValueError("source points coincide: the similarity is undefined")
    scale = float(sigma @ signs) / variance if with_scale else 1.0
    translation = mu_t - scale * rotation @ mu_s
    return Similarity(scale, rotation, translation)

