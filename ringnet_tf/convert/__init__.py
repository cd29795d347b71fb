"""Converting RingNet's released TF 1 checkpoint into this project's compact format.

- `ringnet_tf.convert.original`: the converter (`python -m ringnet_tf.convert_original`);
- `ringnet_tf.convert.standin`: a stand-in of the released checkpoint built with plain
  `tf.compat.v1` graph ops in TF-slim's and HMR's naming (random weights), for tests and benchmarks.
"""
