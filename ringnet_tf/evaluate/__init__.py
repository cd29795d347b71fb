"""Evaluation of predicted faces: the NoW benchmark's scan-to-mesh error (`python -m
ringnet_tf.evaluate now --help`) and the geometry behind it.

Modules: `geometry` (exact point-to-triangle distances with a spatial index, similarity
Procrustes, the similarity refinement), `now` (the NoW protocol and layout), `pickpoints`
(MeshLab `.pp` files), `meshio` (OBJ / PLY / landmark reading), `plot` (cumulative error curve).
"""
