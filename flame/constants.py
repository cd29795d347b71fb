"""Fixed facts of the FLAME head model: its joints, its parameter sizes and its landmark tables.

Landmark order used everywhere in this project (one place, tested): the 68 iBUG landmarks are the
17 jaw-contour points (dynamic, chosen by head yaw) followed by the 51 static points. The 7 NoW
landmarks are picked from the 51 static ones.
"""
from __future__ import annotations

# Kinematic tree: FLAME's five joints and their parents (-1 marks the root).
JOINT_NAMES: tuple[str, ...] = ("global", "neck", "jaw", "left_eye", "right_eye")
PARENTS: tuple[int, ...] = (-1, 0, 1, 1, 1)
NUM_JOINTS: int = 5
ROOT, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(NUM_JOINTS)

# Full pose: 15 axis-angle values, 3 per joint in JOINT_NAMES order.
FULL_POSE_DIM: int = 3 * NUM_JOINTS
# RingNet regresses 6 of them: global rotation then jaw rotation; neck and eyes stay zero.
RINGNET_POSE_DIM: int = 6
# Pose-corrective features: (R - I) of every non-root joint, row-major 3x3 each.
NUM_POSE_FEATURES: int = 9 * (NUM_JOINTS - 1)

# Blend-shape columns in FLAME's `shapedirs` [V, 3, 400]: identity first, then expression.
NUM_SHAPE_TOTAL: int = 300
NUM_EXPRESSION_TOTAL: int = 100

# Landmarks.
NUM_STATIC_LANDMARKS: int = 51
NUM_CONTOUR_LANDMARKS: int = 17
NUM_LANDMARKS: int = NUM_CONTOUR_LANDMARKS + NUM_STATIC_LANDMARKS  # 68, iBUG order
# Contour table: one row of 17 barycentric points per whole degree of head yaw.
CONTOUR_MAX_YAW_DEG: int = 39  # |yaw| is clamped to this
CONTOUR_NUM_ROWS: int = 2 * CONTOUR_MAX_YAW_DEG + 1  # 79
CONTOUR_LAST_ROW: int = CONTOUR_NUM_ROWS - 1  # 78: row for yaws past -39 degrees

# NoW's 7 landmarks as indices into the 51 static ones: outer right eye, inner right eye,
# inner left eye, outer left eye, nose bottom, right mouth corner, left mouth corner.
NOW_LANDMARKS_IN_STATIC: tuple[int, ...] = (19, 22, 25, 28, 16, 31, 37)
NUM_NOW_LANDMARKS: int = 7

# Left-right mirror of the 68 iBUG landmarks: after flipping an image horizontally, landmark i of
# the flipped face is landmark IBUG68_MIRROR[i] of the original (jaw, brows, nose wings, eyes and
# mouth swap sides; the midline points map to themselves).
IBUG68_MIRROR: tuple[int, ...] = (
    tuple(range(16, -1, -1))                      # jaw 0..16
    + tuple(range(26, 16, -1))                    # brows 17..26
    + (27, 28, 29, 30)                            # nose bridge
    + (35, 34, 33, 32, 31)                        # nose bottom
    + (45, 44, 43, 42, 47, 46)                    # right eye 36..41 <- left eye
    + (39, 38, 37, 36, 41, 40)                    # left eye 42..47 <- right eye
    + (54, 53, 52, 51, 50, 49, 48)                # outer upper lip 48..54
    + (59, 58, 57, 56, 55)                        # outer lower lip 55..59
    + (64, 63, 62, 61, 60)                        # inner upper lip 60..64
    + (67, 66, 65)                                # inner lower lip 65..67
)
