"""Tests for flame.io: reading FLAME's files without chumpy, refusing unsafe pickles, validating.

Every file here is built in the test (no licensed FLAME data): the tiny model written in FLAME's
formats by `save_flame_files`, then rewritten byte by byte or re-pickled to look like what the
official releases contain (Python 2 pickles, chumpy objects, old SciPy module paths).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import pickletools
import shutil
import struct
import sys
import types
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from flame import constants as C
from flame import io as fio
from flame.io import FlameFileError, load_flame, read_model_arrays
from flame.model import (DYNAMIC_EMBEDDING_FILENAME, MODEL_FILENAME, STATIC_EMBEDDING_FILENAME,
                         FlameModel, save_flame_files)

_MODEL_FIELDS = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "j_regressor",
                 "weights", "parents", "static_lmk_faces", "static_lmk_bary",
                 "dynamic_lmk_faces", "dynamic_lmk_bary")


# ----------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def flame_dir(tiny_model: FlameModel, tmp_path: Path) -> Path:
    """A folder holding the tiny model in FLAME's three files."""
    folder = tmp_path / "flame"
    save_flame_files(tiny_model, folder)
    return folder


def model_dict(folder: Path) -> dict:
    """The model pickle's dict, read with the standard unpickler: our own file, trusted."""
    with open(folder / MODEL_FILENAME, "rb") as f:
        return pickle.load(f)


def dump(obj, path: Path, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def assert_models_equal(a: FlameModel, b: FlameModel) -> None:
    for name in _MODEL_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.fingerprint() == b.fingerprint()


def assert_flame_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    """The error is one line, starts with the offending path and says what `fragments` say."""
    assert excinfo.type is FlameFileError
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def globals_in(data: bytes) -> set[str]:
    """'module name' of every GLOBAL opcode in a protocol 0-3 pickle."""
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def tiny_png() -> bytes:
    """A valid 1 x 1 grey PNG."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_through_folder(tiny_model, flame_dir):
    loaded = load_flame(flame_dir)
    assert_models_equal(loaded, tiny_model)
    assert loaded.source == str(flame_dir / MODEL_FILENAME)


def test_round_trip_through_model_file(tiny_model, flame_dir):
    assert_models_equal(load_flame(flame_dir / MODEL_FILENAME), tiny_model)


def test_loaded_dtypes_and_shapes(flame_dir):
    m = load_flame(flame_dir)
    v = m.num_vertices
    for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "weights",
                 "static_lmk_bary", "dynamic_lmk_bary"):
        assert getattr(m, name).dtype == np.float64, name
    for name in ("faces", "parents", "static_lmk_faces", "dynamic_lmk_faces"):
        assert getattr(m, name).dtype == np.int64, name
    assert m.shapedirs.shape == (v, 3, C.NUM_SHAPE_TOTAL)
    assert m.exprdirs.shape == (v, 3, C.NUM_EXPRESSION_TOTAL)
    assert m.j_regressor.shape == (C.NUM_JOINTS, v)
    assert tuple(m.parents) == C.PARENTS


def test_round_trip_through_npz(tiny_model, flame_dir, tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    arrays = model_dict(flame_dir)
    arrays["J_regressor"] = arrays["J_regressor"].toarray()  # .npz holds it dense
    np.savez(folder / "FLAME_NEUTRAL.npz", **arrays)
    for name in (STATIC_EMBEDDING_FILENAME, DYNAMIC_EMBEDDING_FILENAME):
        shutil.copy(flame_dir / name, folder / name)
    loaded = load_flame(folder)
    assert_models_equal(loaded, tiny_model)
    assert loaded.source.endswith("FLAME_NEUTRAL.npz")


def test_read_model_arrays_gives_plain_dense_arrays(tiny_model, flame_dir):
    arrays = read_model_arrays(flame_dir / MODEL_FILENAME)
    assert set(arrays) == set(fio.MODEL_KEYS)
    assert all(type(a) is np.ndarray for a in arrays.values())
    np.testing.assert_array_equal(arrays["J_regressor"], tiny_model.j_regressor)
    assert arrays["shapedirs"].shape[-1] == C.NUM_SHAPE_TOTAL + C.NUM_EXPRESSION_TOTAL
    assert arrays["kintree_table"].dtype == np.int64


def test_explicit_embedding_paths(tiny_model, flame_dir, tmp_path):
    elsewhere = tmp_path / "embeddings"
    elsewhere.mkdir()
    for name in (STATIC_EMBEDDING_FILENAME, DYNAMIC_EMBEDDING_FILENAME):
        shutil.move(flame_dir / name, elsewhere / ("my_" + name))
    m = load_flame(flame_dir, static_embedding=elsewhere / ("my_" + STATIC_EMBEDDING_FILENAME),
                   dynamic_embedding=elsewhere / ("my_" + DYNAMIC_EMBEDDING_FILENAME))
    assert_models_equal(m, tiny_model)


@pytest.mark.parametrize("name", ["generic_model.pkl", "male_model.pkl", "female_model.pkl",
                                  "FLAME_NEUTRAL.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl",
                                  "flame2023_Open.pkl", "FLAME2023_OPEN.PKL"])
def test_folder_finds_every_release_name(tiny_model, flame_dir, name):
    os.replace(flame_dir / MODEL_FILENAME, flame_dir / name)
    loaded = load_flame(flame_dir)
    assert loaded.source == str(flame_dir / name)
    assert loaded.fingerprint() == tiny_model.fingerprint()


def test_none_loads_the_open_head_model(tiny_model, flame_dir, monkeypatch):
    calls = []

    def ensure_open_head():
        calls.append(1)
        return flame_dir

    fake = types.ModuleType("flame.openhead")
    fake.ensure_open_head = ensure_open_head
    monkeypatch.setitem(sys.modules, "flame.openhead", fake)
    assert load_flame().fingerprint() == tiny_model.fingerprint()
    assert calls == [1]


# ----------------------------------------------------------------------------------------------
# What the official files contain: chumpy objects, Python 2 pickles, old SciPy paths


@contextlib.contextmanager
def fake_chumpy():
    """Registers stand-in `chumpy`, `chumpy.ch` and `chumpy.ch_ops` modules while pickling.

    `Ch` keeps its value in `__dict__['x']` next to bookkeeping state, and drops its unpicklable
    parts in `__getstate__`, as chumpy's Ch does; `add` is a chumpy expression (no `x`).
    """
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    ch_ops = types.ModuleType("chumpy.ch_ops")

    class Ch:
        def __init__(self, x):
            self.__dict__.update(x=np.asarray(x), _dirty_vars={"x"}, _itr=None,
                                 _depends_on_deps={}, _make_dense=False, _make_sparse=False,
                                 _parents={}, _cache={"r": None})

        def __getstate__(self):
            state = dict(self.__dict__)
            del state["_parents"], state["_cache"]
            return state

    class add:  # noqa: N801 (chumpy's own name)
        def __init__(self, a, b):
            self.__dict__.update(a=a, b=b, _dirty_vars=set(), _itr=None)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
    ch.Ch, ch_ops.add, chumpy.ch, chumpy.ch_ops, chumpy.Ch = Ch, add, ch, ch_ops, Ch
    modules = {"chumpy": chumpy, "chumpy.ch": ch, "chumpy.ch_ops": ch_ops}
    assert not set(modules) & set(sys.modules)
    sys.modules.update(modules)
    try:
        yield ch
    finally:
        for name in modules:
            del sys.modules[name]


@pytest.mark.parametrize("writer", ["protocol 0", "protocol 2", "python 2"])
def test_chumpy_pickle_loads_without_chumpy(tiny_model, flame_dir, writer):
    d = model_dict(flame_dir)
    with fake_chumpy() as ch:
        for key in ("v_template", "shapedirs", "posedirs", "J"):
            d[key] = ch.Ch(d[key])
        if writer == "python 2":  # the shape of FLAME 2019 / 2020's files
            data = python2_pickle(d)
        else:
            data = pickle.dumps(d, protocol=int(writer[-1]))
    assert "chumpy.ch Ch" in globals_in(data)
    (flame_dir / MODEL_FILENAME).write_bytes(data)

    loaded = load_flame(flame_dir)
    assert_models_equal(loaded, tiny_model)
    assert "chumpy" not in sys.modules
    with pytest.raises(ImportError):
        importlib.import_module("chumpy")  # not installed here: nothing imported it either


def test_chumpy_expression_without_x_is_an_error(flame_dir):
    d = model_dict(flame_dir)
    with fake_chumpy() as ch:
        d["posedirs"] = sys.modules["chumpy.ch_ops"].add(ch.Ch(d["posedirs"]), ch.Ch(1.0))
        path = dump(d, flame_dir / MODEL_FILENAME)
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, "'posedirs'", "chumpy.ch_ops.add", "'x'")


@pytest.mark.parametrize("fmt", ["csc", "csr"])
def test_old_scipy_sparse_module_path(tiny_model, flame_dir, fmt):
    d = model_dict(flame_dir)
    d["J_regressor"] = getattr(scipy.sparse, f"{fmt}_matrix")(tiny_model.j_regressor)
    data = pickle.dumps(d, protocol=2)
    new, old = f"scipy.sparse._{fmt} {fmt}_matrix", f"scipy.sparse.{fmt} {fmt}_matrix"
    assert new in globals_in(data)
    # GLOBAL operands are newline-terminated text: renaming the module is a plain byte swap.
    data = data.replace(f"scipy.sparse._{fmt}\n".encode(), f"scipy.sparse.{fmt}\n".encode())
    assert old in globals_in(data) and new not in globals_in(data)
    path = flame_dir / MODEL_FILENAME
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no deprecated scipy module imported
        arrays = read_model_arrays(path)
    np.testing.assert_array_equal(arrays["J_regressor"], tiny_model.j_regressor)


class Python2Pickler(pickle._Pickler):
    """Writes text and bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as cPickle did.

    With the module names rewritten (numpy.core.multiarray, scipy.sparse.csc) the output has the
    shape of the Python 2 pickles that FLAME's releases and RingNet's embeddings are.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def python2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump(obj)
    return (buf.getvalue()
            .replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            .replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n"))


def test_python2_style_pickles_load_under_numpy2(tiny_model, flame_dir):
    data = python2_pickle(model_dict(flame_dir))
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"SHORT_BINSTRING", "BINSTRING"} <= ops and "BINUNICODE" not in ops
    assert "numpy.core.multiarray _reconstruct" in globals_in(data)
    assert not any(g.startswith(("numpy._core", "_codecs")) for g in globals_in(data))
    (flame_dir / MODEL_FILENAME).write_bytes(data)
    static = pickle.loads((flame_dir / STATIC_EMBEDDING_FILENAME).read_bytes())
    (flame_dir / STATIC_EMBEDDING_FILENAME).write_bytes(python2_pickle(static))

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy.core is not touched
        loaded = load_flame(flame_dir)
    assert_models_equal(loaded, tiny_model)


def test_protocol5_pickle_loads(tiny_model, flame_dir):
    """A file re-saved by Python 3 with the default protocol (arrays via _frombuffer) loads."""
    dump(model_dict(flame_dir), flame_dir / MODEL_FILENAME, protocol=5)
    assert_models_equal(load_flame(flame_dir), tiny_model)


def test_fortran_ordered_arrays_come_back_c_contiguous(flame_dir):
    # RingNet's static embedding stores lmk_b_coords in Fortran order.
    static = pickle.loads((flame_dir / STATIC_EMBEDDING_FILENAME).read_bytes())
    static["lmk_b_coords"] = np.asfortranarray(static["lmk_b_coords"])
    static["lmk_face_idx"] = static["lmk_face_idx"].astype(np.uint32)
    path = dump(static, flame_dir / STATIC_EMBEDDING_FILENAME, protocol=0)
    faces, bary = fio.read_static_embedding(path)
    assert bary.flags.c_contiguous and faces.dtype == np.int64
    np.testing.assert_array_equal(bary, static["lmk_b_coords"])


# ----------------------------------------------------------------------------------------------
# Unsafe pickles are refused, and nothing in them runs


class Payload:
    """Unpickles as func(arg): what a malicious pickle does."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def payloads(marker: Path) -> dict[str, Payload]:
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {
        "system": Payload(os.system, f"touch {marker}"),
        "eval": Payload(eval, touch),
        "exec": Payload(exec, touch),
    }


@pytest.mark.parametrize("kind", ["system", "eval", "exec"])
def test_unsafe_global_in_model_is_refused(flame_dir, tmp_path, kind):
    marker = tmp_path / "pwned"
    d = model_dict(flame_dir)
    d["v_template"] = payloads(marker)[kind]
    path = dump(d, flame_dir / MODEL_FILENAME)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, kind, "refused")
    assert not marker.exists()


def test_unsafe_global_in_embeddings_is_refused(flame_dir, tmp_path):
    marker = tmp_path / "pwned"
    static = dump(payloads(marker)["system"], flame_dir / STATIC_EMBEDDING_FILENAME)
    with pytest.raises(FlameFileError) as e:
        fio.read_static_embedding(static)
    assert_flame_error(e, static, "system")

    # The dynamic embedding is a pickle inside a .npy: np.load(allow_pickle=True) would run it.
    arr = np.empty((), dtype=object)
    arr[()] = {"lmk_face_idx": payloads(marker)["eval"], "lmk_b_coords": np.zeros((79, 17, 3))}
    dynamic = flame_dir / DYNAMIC_EMBEDDING_FILENAME
    np.save(dynamic, arr, allow_pickle=True)
    with pytest.raises(FlameFileError) as e:
        fio.read_dynamic_embedding(dynamic)
    assert_flame_error(e, dynamic, "eval")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Wrong files: one-line errors naming the file


def body_model(num_vertices: int, num_joints: int, num_shape: int, num_pose: int) -> dict:
    rng = np.random.default_rng(0)
    parents = np.concatenate([[4294967295], np.arange(num_joints - 1)])
    weights = rng.random((num_vertices, num_joints))
    return {
        "v_template": np.zeros((num_vertices, 3)),
        "f": rng.integers(0, num_vertices, (2 * num_vertices, 3)).astype(np.uint32),
        "shapedirs": np.zeros((num_vertices, 3, num_shape), np.float32),
        "posedirs": np.zeros((num_vertices, 3, num_pose), np.float32),
        "J_regressor": scipy.sparse.csc_matrix((num_joints, num_vertices)),
        "weights": weights / weights.sum(1, keepdims=True),
        "kintree_table": np.stack([parents, np.arange(num_joints)]),
    }


@pytest.mark.parametrize("name,layout,expected", [
    ("SMPL", (6890, 24, 10, 207), "SMPL body model"),
    # SMPL-H and SMPL-X posedirs (459 and 486 columns) are cut to keep the files small: the
    # vertex and joint counts are what tells the models apart.
    ("SMPL-H", (6890, 52, 16, 9), "SMPL body model"),
    ("SMPL-X", (10475, 55, 400, 9), "SMPL body model"),
    ("MANO", (778, 16, 10, 135), "MANO hand model"),
])
def test_body_models_are_named(tmp_path, name, layout, expected):
    path = dump(body_model(*layout), tmp_path / "generic_model.pkl")
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, expected, "not FLAME", f"{layout[0]} vertices")


def test_smplx_npz_is_named(tmp_path):
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    arrays = body_model(10475, 55, 400, 9)
    arrays["J_regressor"] = arrays["J_regressor"].toarray()
    np.savez(path, **arrays)
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, "SMPL body model")


@pytest.mark.parametrize("keep", [0, 1, 20, 0.5, -1])
def test_truncated_pickle(flame_dir, keep):
    path = flame_dir / MODEL_FILENAME
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "empty" if n == 0 else "not a readable pickle")


def test_truncated_npz(flame_dir, tmp_path):
    path = tmp_path / "FLAME_NEUTRAL.npz"
    arrays = model_dict(flame_dir)
    arrays["J_regressor"] = arrays["J_regressor"].toarray()
    np.savez(path, **arrays)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, "not a readable .npz")


def test_npz_with_pickled_sparse_regressor(flame_dir, tmp_path):
    path = tmp_path / "FLAME_NEUTRAL.npz"
    np.savez(path, **model_dict(flame_dir))  # J_regressor becomes a pickled object array
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, "J_regressor", "pickled object")


def test_zipped_download_is_named(flame_dir, tmp_path):
    path = tmp_path / "generic_model.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.write(flame_dir / MODEL_FILENAME, "FLAME2020/generic_model.pkl")
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, "zip archive", "unzip")


def _set_in(d: dict, key: str, fn) -> None:
    d[key] = fn(d[key])


def _rows_off(w):
    w = w.copy()
    w[3] *= 1.5
    return w


def _nan_at_5(v):
    v = v.copy()
    v[5, 1] = np.nan
    return v


@pytest.mark.parametrize("mutate,fragments", [
    (lambda d: _set_in(d, "posedirs", lambda a: a[:, :, :35]),
     ["posedirs has shape (64, 3, 35)", "expected (64, 3, 36)"]),
    (lambda d: _set_in(d, "shapedirs", lambda a: a[:, :, :350]), ["shapedirs has 350 components"]),
    (lambda d: _set_in(d, "weights", _rows_off), ["weights rows must sum to 1", "row (3,)"]),
    (lambda d: _set_in(d, "weights", lambda w: w[:, :4]), ["weights has shape (64, 4)"]),
    (lambda d: _set_in(d, "kintree_table", lambda k: np.stack([[4294967295, 0, 1, 1, 2], k[1]])),
     ["parents [-1, 0, 1, 1, 2]", "expected FLAME's [-1, 0, 1, 1, 1]"]),
    (lambda d: _set_in(d, "kintree_table", lambda k: k[:, ::-1]), ["kintree_table[1]"]),
    (lambda d: _set_in(d, "f", lambda f: np.where(f == f.max(), 64, f)),
     ["f holds index 64", "64 vertices"]),
    (lambda d: _set_in(d, "f", lambda f: f + 0.5), ["f holds non-integer values"]),
    (lambda d: _set_in(d, "v_template", _nan_at_5), ["v_template holds 1 non-finite"]),
    (lambda d: _set_in(d, "v_template", lambda v: v[:, :2]), ["v_template has shape (64, 2)"]),
    (lambda d: _set_in(d, "J_regressor", lambda j: j[:4]), ["J_regressor has shape (4, 64)"]),
    (lambda d: _set_in(d, "J_regressor", lambda j: j.toarray()[:, :63]),
     ["J_regressor has shape (5, 63)"]),
    (lambda d: _set_in(d, "posedirs", lambda a: a.astype(str)), ["posedirs has dtype <U"]),
    (lambda d: d.pop("weights"), ["missing keys weights", "a FLAME model holds"]),
    (lambda d: [d.pop(k) for k in ("f", "J_regressor")], ["missing keys f, J_regressor"]),
])
def test_inconsistent_model_is_an_error(flame_dir, mutate, fragments):
    d = model_dict(flame_dir)
    mutate(d)
    path = dump(d, flame_dir / MODEL_FILENAME)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, *fragments)


@pytest.mark.parametrize("obj,fragment", [
    ([1, 2, 3], "holds a list, expected a dict"),
    ({"lmk_face_idx": np.zeros(51), "lmk_b_coords": np.zeros((51, 3))}, "landmark embedding"),
])
def test_not_a_model_dict(tmp_path, obj, fragment):
    path = dump(obj, tmp_path / "generic_model.pkl")
    with pytest.raises(FlameFileError) as e:
        read_model_arrays(path)
    assert_flame_error(e, path, fragment)


@pytest.mark.parametrize("content,fragment", [
    (tiny_png(), "PNG image"),
    (b"<!DOCTYPE html><html><body>Please log in</body></html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS"),
    (b"\x00\x01\x02 definitely not a pickle", "not a readable pickle"),
])
def test_foreign_file_renamed_pkl(flame_dir, content, fragment):
    path = flame_dir / MODEL_FILENAME
    path.write_bytes(content)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, fragment)


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere"
    with pytest.raises(FlameFileError) as e:
        load_flame(path)
    assert_flame_error(e, path, "no such file or folder")


@pytest.mark.parametrize("name", [STATIC_EMBEDDING_FILENAME, DYNAMIC_EMBEDDING_FILENAME])
def test_missing_embedding_names_the_path(flame_dir, name):
    (flame_dir / name).unlink()
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, flame_dir / name, "missing", "RingNet")


def test_folder_with_two_models(flame_dir):
    shutil.copy(flame_dir / MODEL_FILENAME, flame_dir / "flame2023_Open.pkl")
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, flame_dir, "several FLAME models", "generic_model.pkl",
                       "flame2023_Open.pkl", "name the one")


def test_folder_without_a_model(flame_dir):
    os.replace(flame_dir / MODEL_FILENAME, flame_dir / "my_head.pkl")
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, flame_dir, "no FLAME model", "generic_model", "FLAME_NEUTRAL",
                       "flame2023_no_jaw", "flame2023_Open", ".pkl or .npz", "my_head.pkl")


def _static(flame_dir: Path) -> dict:
    return pickle.loads((flame_dir / STATIC_EMBEDDING_FILENAME).read_bytes())


def _dynamic(flame_dir: Path) -> dict:
    return np.load(flame_dir / DYNAMIC_EMBEDDING_FILENAME, allow_pickle=True)[()]  # our own file


def _save_dynamic(flame_dir: Path, d) -> Path:
    arr = np.empty((), dtype=object)
    arr[()] = d
    path = flame_dir / DYNAMIC_EMBEDDING_FILENAME
    np.save(path, arr, allow_pickle=True)
    return path


def test_static_embedding_errors(flame_dir):
    path = flame_dir / STATIC_EMBEDDING_FILENAME
    s = _static(flame_dir)
    dump({**s, "lmk_face_idx": s["lmk_face_idx"][:50]}, path)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "lmk_face_idx has shape (50,)", "expected (51)")

    dump({**s, "lmk_b_coords": 2 * s["lmk_b_coords"]}, path)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "lmk_b_coords rows must sum to 1")

    dump({"lmk_face_idx": s["lmk_face_idx"]}, path)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "missing keys lmk_b_coords")


def test_dynamic_embedding_errors(flame_dir):
    path = flame_dir / DYNAMIC_EMBEDDING_FILENAME
    d = _dynamic(flame_dir)
    _save_dynamic(flame_dir, {**d, "lmk_b_coords": d["lmk_b_coords"][:, :16]})
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "lmk_b_coords has shape (79, 16, 3)")

    np.save(path, np.zeros((79, 17)))  # a plain array, not FLAME's 0-d object array
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "0-d object array")

    path.write_bytes(tiny_png())
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, "PNG image")


def test_embedding_face_index_beyond_the_model(tiny_model, flame_dir):
    num_faces = tiny_model.num_faces
    d = _dynamic(flame_dir)
    d["lmk_face_idx"] = d["lmk_face_idx"].copy()
    d["lmk_face_idx"][40, 3] = num_faces
    path = _save_dynamic(flame_dir, d)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, path, f"index {num_faces}", f"{num_faces} faces")

    _save_dynamic(flame_dir, _dynamic(flame_dir) | {"lmk_face_idx": tiny_model.dynamic_lmk_faces})
    s = _static(flame_dir)
    static = dump({**s, "lmk_face_idx": s["lmk_face_idx"] + num_faces},
                  flame_dir / STATIC_EMBEDDING_FILENAME)
    with pytest.raises(FlameFileError) as e:
        load_flame(flame_dir)
    assert_flame_error(e, static, "lmk_face_idx holds index", f"{num_faces} faces")


def test_corrupted_bytes_only_raise_flame_file_error(flame_dir):
    """Random truncations and byte flips either load or fail as FlameFileError, never otherwise."""
    path = flame_dir / MODEL_FILENAME
    data = path.read_bytes()
    rng = np.random.default_rng(1234)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(150):
        mutated = bytearray(data)
        if trial % 3 == 0:
            mutated = mutated[: int(rng.integers(0, len(data)))]
        else:
            # Flip bytes where the structure is (opcodes, shapes, dtypes): the start and the end.
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, 1500)) if rng.random() < 0.7 else \
                    int(rng.integers(len(data) - 1500, len(data)))
                mutated[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(mutated))
        try:
            read_model_arrays(path)
            outcomes["loaded"] += 1
        except FlameFileError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_error_is_a_picklable_value_error(tmp_path):
    err = FlameFileError(tmp_path / "x.pkl", "something\nwrong")
    assert isinstance(err, ValueError)
    assert str(err) == f"{tmp_path / 'x.pkl'}: something wrong"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.path == err.path
