"""RingNet's losses against values worked out by hand."""
import numpy as np
import pytest
import tensorflow as tf

from ringnet_tf.losses import l2_prior, landmark_loss, shape_consistency_loss


def test_shape_consistency_hand_computed():
    # One ring, R = 3, 1-d shapes: same identity at 0 and 1, odd one at 3.
    shape = tf.constant([[[0.0], [1.0], [3.0]]])
    # d_same = [[0, 1], [1, 0]]; d_odd = [9, 4]; hinge(d_same - d_odd[j] + 0.5):
    # j=0: max(0, 0-9+.5)=0, max(0, 1-9+.5)=0; j=1: max(0, 1-4+.5)=0, max(0, 0-4+.5)=0 -> 0
    assert float(shape_consistency_loss(shape)) == 0.0
    # Odd one at 1.5: d_odd = [2.25, 0.25]; j=0: [0-2.25+.5, 1-2.25+.5] -> 0, 0;
    # j=1: [1-0.25+0.5, 0-0.25+0.5] = [1.25, 0.25] -> mean over 4 pairs = 1.5 / 4
    shape = tf.constant([[[0.0], [1.0], [1.5]]])
    assert float(shape_consistency_loss(shape)) == pytest.approx(1.5 / 4)
    # The margin: all three equal -> every term is eta.
    assert float(shape_consistency_loss(tf.zeros((2, 6, 4)), eta=0.7)) == pytest.approx(0.7)


def test_shape_consistency_is_invariant_to_ring_order_and_translation():
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(3, 6, 10)).astype(np.float32)
    base = float(shape_consistency_loss(tf.constant(shape)))
    perm = np.concatenate([rng.permutation(5), [5]])
    assert float(shape_consistency_loss(tf.constant(shape[:, perm]))) == pytest.approx(base, rel=1e-6)
    assert float(shape_consistency_loss(tf.constant(shape + 3.0))) == pytest.approx(base, rel=1e-5)


def test_landmark_loss_hand_computed():
    pred = tf.constant([[[0.0, 0.0], [1.0, 1.0]]])
    target = tf.constant([[[0.5, -0.5, 1.0], [0.0, 0.0, 0.5]]])
    # (1 * (0.5 + 0.5) + 0.5 * (1 + 1)) / 2 landmarks = 1
    assert float(landmark_loss(pred, target)) == pytest.approx(1.0)
    assert float(landmark_loss(pred, tf.zeros((1, 2, 3)))) == 0.0


def test_l2_prior():
    assert float(l2_prior(tf.constant([[3.0, 4.0], [0.0, 1.0]]))) == pytest.approx(13.0)
