"""MeshLab PickPoints files (`.pp`): the landmark format of the NoW scans.

A `.pp` file is XML: a `<!DOCTYPE PickedPoints>` line, a `<PickedPoints>` root holding an optional
`<DocumentData>` block (date, user, the mesh file's name, a template name) and one
`<point x=".." y=".." z=".." active="1" name=".."/>` element per picked point, in picking order.
Attribute order varies between writers; `active="0"` marks a point unticked in MeshLab's list
(its coordinates are still written). Coordinates are in the unit of the mesh they were picked on.
"""
from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT_TAG = "PickedPoints"
POINT_TAG = "point"


class PickPointsError(ValueError):
    """A `.pp` file that cannot be read; the message starts with the file's path."""


@dataclasses.dataclass(frozen=True)
class PickedPoint:
    """One picked point: its name, position and MeshLab's active flag."""

    name: str
    x: float
    y: float
    z: float
    active: bool = True

    @property
    def xyz(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.z)


def read_pickpoints(path: str | os.PathLike, expected_count: int | None = None) -> list[PickedPoint]:
    """Read every `<point>` of a PickPoints file, in file order.

    Args:
      path: the `.pp` file.
      expected_count: if given, the exact number of points required.
    Returns:
      The points; a point without a name is named by its 0-based position.
    Raises:
      PickPointsError naming the file: unreadable, not XML, not a PickedPoints document, a point
      with a missing or non-numeric coordinate, a bad active flag, or the wrong count.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PickPointsError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise PickPointsError(f"{path}: not valid XML ({err})") from None
    if root.tag != ROOT_TAG:
        raise PickPointsError(f"{path}: root element is <{root.tag}>, expected <{ROOT_TAG}>")
    points = []
    for index, element in enumerate(root.findall(POINT_TAG)):
        coords = []
        for axis in ("x", "y", "z"):
            text = element.get(axis)
            if text is None:
                raise PickPointsError(f"{path}: point {index} has no '{axis}' attribute")
            try:
                value = float(text)
            except ValueError:
                raise PickPointsError(
                    f"{path}: point {index} has a non-numeric '{axis}': {text!r}") from None
            if not math.isfinite(value):
                raise PickPointsError(f"{path}: point {index} has a non-finite '{axis}': {text!r}")
            coords.append(value)
        active_text = element.get("active", "1").strip()
        if active_text not in ("0", "1"):
            raise PickPointsError(
                f"{path}: point {index} has active={active_text!r}, expected '0' or '1'")
        points.append(PickedPoint(name=element.get("name", str(index)), x=coords[0], y=coords[1],
                                  z=coords[2], active=active_text == "1"))
    if expected_count is not None and len(points) != expected_count:
        raise PickPointsError(f"{path}: {len(points)} points, expected {expected_count}")
    return points


def pickpoints_array(points: Sequence[PickedPoint]) -> np.ndarray:
    """`[K, 3] float64` coordinates of picked points, in order."""
    return np.array([p.xyz for p in points], np.float64).reshape(len(points), 3)


def write_pickpoints(path: str | os.PathLike, coordinates: np.ndarray,
                     names: Sequence[str] | None = None, data_file_name: str = "",
                     active: Sequence[bool] | None = None) -> None:
    """Write points as MeshLab writes them (fixtures, and landmarks for viewing in MeshLab).

    Args:
      path: output `.pp` file.
      coordinates: `[K, 3]` float.
      names: K names (default "0".."K-1").
      data_file_name: the mesh the points belong to (informative).
      active: K flags (default all active).
    """
    coordinates = np.asarray(coordinates, np.float64).reshape(-1, 3)
    names = [str(i) for i in range(len(coordinates))] if names is None else list(names)
    active = [True] * len(coordinates) if active is None else list(active)
    if not len(names) == len(active) == len(coordinates):
        raise ValueError("coordinates, names and active flags differ in length")
    root = ET.Element(ROOT_TAG)
    document = ET.SubElement(root, "DocumentData")
    ET.SubElement(document, "DateTime", {"time": "00:00:00", "date": "2000-01-01"})
    ET.SubElement(document, "User", {"name": "ringnet_tf"})
    ET.SubElement(document, "DataFileName", {"name": data_file_name})
    ET.SubElement(document, "templateName", {"name": ""})
    for (x, y, z), name, flag in zip(coordinates, names, active):
        ET.SubElement(root, POINT_TAG, {"x": repr(float(x)), "y": repr(float(y)),
                                        "z": repr(float(z)), "active": "1" if flag else "0",
                                        "name": name})
    ET.indent(root, space=" ")
    text = "<!DOCTYPE PickedPoints>\n" + ET.tostring(root, encoding="unicode") + "\n"
    Path(path).write_text(text, encoding="utf-8")
