"""The named 159-d parameter layout."""
import numpy as np
import pytest
import tensorflow as tf

from ringnet_tf.params import ParamSpec


def test_paper_layout_is_159_in_order():
    spec = ParamSpec()
    assert spec.total == 159
    assert spec.slices() == {"cam": slice(0, 3), "pose": slice(3, 9), "shape": slice(9, 109),
                             "expression": slice(109, 159)}


def test_split_join_round_trip_numpy_and_tf():
    spec = ParamSpec(num_shape=10, num_expression=5)
    theta = np.arange(2 * spec.total, dtype=np.float32).reshape(2, -1)
    parts = spec.split(theta)
    assert parts["pose"].shape == (2, 6) and parts["expression"][0, 0] == 3 + 6 + 10
    np.testing.assert_array_equal(spec.join(parts, np.concatenate), theta)
    tf_parts = spec.split(tf.constant(theta))
    np.testing.assert_array_equal(spec.join(tf_parts, tf.concat).numpy(), theta)


def test_bad_sizes_name_the_value():
    with pytest.raises(ValueError, match="got 301"):
        ParamSpec(num_shape=301)
    with pytest.raises(ValueError, match="got 158"):
        ParamSpec().split(np.zeros((1, 158)))
