"""RingNet's parameter vector, named once: camera, pose, shape, expression (159 values by default).

Layout (in order): cam (s, tx, ty) | pose: global rotation (3, axis-angle), jaw rotation (3) |
shape: FLAME's first `num_shape` identity coefficients | expression: the first `num_expression`.
Use `ParamSpec.split` / `ParamSpec.join` instead of bare slices.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flame import constants as C

NUM_CAM = 3


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Sizes of the regressed parameter groups; `total` is 159 with the paper's 100 and 50."""

    num_shape: int = 100
    num_expression: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.num_shape <= C.NUM_SHAPE_TOTAL:
            raise ValueError(f"num_shape must be in [1, {C.NUM_SHAPE_TOTAL}]; got {self.num_shape}")
        if not 1 <= self.num_expression <= C.NUM_EXPRESSION_TOTAL:
            raise ValueError(
                f"num_expression must be in [1, {C.NUM_EXPRESSION_TOTAL}]; got {self.num_expression}")

    @property
    def sizes(self) -> dict[str, int]:
        return {"cam": NUM_CAM, "pose": C.RINGNET_POSE_DIM, "shape": self.num_shape,
                "expression": self.num_expression}

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, size in self.sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    def split(self, theta: Any) -> dict[str, Any]:
        """[..., total] (NumPy or TF) -> {"cam": [..., 3], "pose": [..., 6], "shape", "expression"}."""
        if theta.shape[-1] != self.total:
            raise ValueError(f"expected {self.total} parameters, got {theta.shape[-1]}")
        return {name: theta[..., s] for name, s in self.slices().items()}

    def join(self, parts: dict[str, Any], concat) -> Any:
        """Inverse of `split`; `concat` is the array library's concatenate (np.concatenate, tf.concat)."""
        return concat([parts[name] for name in self.sizes], -1)
