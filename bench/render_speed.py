"""Renders per second of 224 x 224 images of a FLAME-sized head: the project's NumPy renderer
against an OpenGL route (moderngl on a headless EGL context: Mesa's llvmpipe on the CPU; run when
moderngl and Mesa are installed) and a naive baseline (painter's algorithm, one cv2.fillConvexPoly
per triangle), in one process and in two worker processes. Checks that the NumPy and GL pictures
agree, and saves the rendered head (frontal and 3/4 view; the GL renders below) as a PNG.

llvmpipe uses every core by default; LP_NUM_THREADS=1 restricts it to one per process.

    python bench/render_speed.py [--renders 200] [--repeats 3] [--out /tmp/render_speed_head.png]

Other jobs on the machine make timings noisy: each figure is the best and the median of
`--repeats` runs, and the load average is printed alongside.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf import render as R  # noqa: E402

TARGET_PER_SECOND = 100.0
YAW_3_4 = 45.0
BACKGROUND = (40, 40, 48)


# ---------------------------------------------------------------------------------------------
# The mesh and the camera


def load_head() -> tuple[np.ndarray, np.ndarray, str]:
    """The open head's template (FLAME topology) if `flame.openhead` has it, else a stand-in."""
    try:
        from flame.openhead import build_open_head
        model = build_open_head()
        return (np.asarray(model.v_template, np.float64), np.asarray(model.faces, np.int64),
                "open head (flame.openhead.build_open_head)")
    except ImportError:
        import trimesh
        sphere = trimesh.creation.uv_sphere(radius=1.0, count=[51, 51])
        verts = np.asarray(sphere.vertices) * [0.08, 0.11, 0.10]  # a head-sized ellipsoid
        return (verts, np.asarray(sphere.faces, np.int64),
                "stand-in ellipsoid (no flame.openhead yet)")


def fit_camera(verts: np.ndarray, fill: float = 0.9, head_height: float = 0.24) -> np.ndarray:
    """(s, tx, ty) framing the head as a face crop does: the vertices within `head_height`
    metres of the top span `fill` of the image, centred; the neck runs out at the bottom."""
    head = verts[verts[:, 1] >= verts[:, 1].max() - head_height]
    lo, hi = head[:, :2].min(0), head[:, :2].max(0)
    s = 2.0 * fill / (hi - lo).max()
    return np.array([s, *(-(lo + hi) / 2)])


# ---------------------------------------------------------------------------------------------
# The routes: each is a callable (verts, faces, cam) -> (image, face_index)


class NumpyRoute:
    name = "numpy (ringnet_tf.render)"

    def __init__(self, size: int, **options):
        self.size, self.options = size, options

    def __call__(self, verts, faces, cam):
        result = R.render(verts, faces, cam, self.size, **self.options)
        return result.image, result.face_index


class PainterRoute:
    """Baseline: flat-shaded triangles drawn back to front with cv2.fillConvexPoly (no z-buffer)."""
    name = "painter (cv2.fillConvexPoly per triangle)"
    shift = 8

    def __init__(self, size: int):
        import cv2
        self.cv2, self.size = cv2, size
        self.light = np.asarray(R.DEFAULT_LIGHT_DIR) / np.linalg.norm(R.DEFAULT_LIGHT_DIR)

    def __call__(self, verts, faces, cam):
        from ringnet_tf.camera import project
        uv = np.asarray(project(verts, cam, self.size))
        tri = verts[faces]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-30)
        cosine = np.abs(normal @ self.light)
        shade = R.DEFAULT_AMBIENT + R.DEFAULT_DIFFUSE * cosine
        colour = np.clip(np.outer(shade, R.DEFAULT_COLOR) * 255, 0, 255).round().astype(int)
        points = np.round(uv[faces] * (1 << self.shift)).astype(np.int32)  # centres: whole numbers
        image = np.zeros((self.size, self.size, 3), np.uint8)
        for f in np.argsort(tri[:, :, 2].mean(axis=1), kind="stable"):  # far to near
            self.cv2.fillConvexPoly(image, points[f], colour[f].tolist(), self.cv2.LINE_8,
                                    self.shift)
        return image, None


GL_VERTEX_SHADER = """
#version 330
uniform vec3 cam;
uniform vec2 zmap;
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_color;
out vec3 v_normal;
out vec3 v_color;
out float v_z;
void main() {
    v_normal = in_normal;
    v_color = in_color;
    v_z = in_pos.z;
    gl_Position = vec4(cam.x * (in_pos.x + cam.y), cam.x * (in_pos.y + cam.z),
                       (in_pos.z - zmap.x) * zmap.y, 1.0);
}
"""

GL_FRAGMENT_SHADER = """
#version 330
uniform vec3 light;
uniform float ambient;
uniform float diffuse;
in vec3 v_normal;
in vec3 v_color;
in float v_z;
layout(location = 0) out vec4 color;
layout(location = 1) out float depth;
layout(location = 2) out int face;
void main() {
    float len = length(v_normal);
    float c = len > 0.0 ? dot(v_normal, light) / len : 0.0;
    if (!gl_FrontFacing) c = -c;
    color = vec4(clamp(v_color * (ambient + diffuse * max(c, 0.0)), 0.0, 1.0), 1.0);
    depth = v_z;
    face = gl_PrimitiveID + 1;
}
"""


class GLRoute:
    """The same shading in GLSL, on a headless EGL context (Mesa llvmpipe: CPU, multi-threaded).

    Same outputs as `ringnet_tf.render.render` (image, depth, face index; vertex normals computed
    with NumPy as there); depth test on a normalised Z. Needs `pip install moderngl` and Mesa's
    EGL and DRI drivers (Debian: libegl1 libgl1-mesa-dri)."""
    name = "OpenGL (moderngl + EGL, Mesa llvmpipe)"

    def __init__(self, size: int):
        import moderngl
        self.moderngl, self.size = moderngl, size
        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.renderer = self.ctx.info["GL_RENDERER"]
        self.prog = self.ctx.program(vertex_shader=GL_VERTEX_SHADER,
                                     fragment_shader=GL_FRAGMENT_SHADER)
        attachments = [self.ctx.renderbuffer((size, size), 4, dtype="f1"),
                       self.ctx.renderbuffer((size, size), 1, dtype="f4"),
                       self.ctx.renderbuffer((size, size), 1, dtype="i4")]
        self.fbo = self.ctx.framebuffer(attachments, self.ctx.depth_renderbuffer((size, size)))
        self.faces = None
        light = np.asarray(R.DEFAULT_LIGHT_DIR, np.float64)
        self.prog["light"].value = tuple(light / np.linalg.norm(light))
        self.prog["ambient"].value = R.DEFAULT_AMBIENT
        self.prog["diffuse"].value = R.DEFAULT_DIFFUSE

    def __call__(self, verts, faces, cam, with_depth: bool = False):
        with self.ctx:  # make this context current (several may exist in one process)
            return self._render(verts, faces, cam, with_depth)

    def _render(self, verts, faces, cam, with_depth):
        ctx, size = self.ctx, self.size
        normals = R._vertex_normals(verts, np.ascontiguousarray(faces.T)).T
        colors = np.broadcast_to(np.asarray(R.DEFAULT_COLOR), verts.shape)
        data = np.concatenate([verts, normals, colors], axis=1).astype("f4")
        if self.faces is not faces:
            self.vbo = ctx.buffer(reserve=data.nbytes)
            self.vao = ctx.vertex_array(
                self.prog, [(self.vbo, "3f 3f 3f", "in_pos", "in_normal", "in_color")],
                ctx.buffer(np.asarray(faces, "i4").tobytes()))
            self.faces = faces
        self.vbo.write(data.tobytes())
        zlo, zhi = verts[:, 2].min(), verts[:, 2].max()
        half = 0.51 * (zhi - zlo) + 1e-12
        self.prog["cam"].value = tuple(float(c) for c in cam)
        self.prog["zmap"].value = (0.5 * (zlo + zhi), -1.0 / half)  # nearer: smaller GL depth
        self.fbo.use()
        ctx.enable(self.moderngl.DEPTH_TEST)
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)  # face attachment: 0, i.e. index -1
        self.vao.render(self.moderngl.TRIANGLES)
        # GL's rows start at the bottom; the project's images at the top.
        image = np.frombuffer(self.fbo.read(components=3, attachment=0), np.uint8)
        face = np.frombuffer(self.fbo.read(components=1, attachment=2, dtype="i4"), np.int32)
        image = image.reshape(size, size, 3)[::-1]
        face = face.reshape(size, size)[::-1] - 1
        if with_depth:
            depth = np.frombuffer(self.fbo.read(components=1, attachment=1, dtype="f4"), np.float32)
            return image, face, np.where(face >= 0, depth.reshape(size, size)[::-1], -np.inf)
        return image, face


ROUTES = {"numpy": NumpyRoute, "numpy-cull": lambda size: NumpyRoute(size, cull_backfaces=True),
          "numpy-ss2": lambda size: NumpyRoute(size, supersample=2), "gl": GLRoute,
          "painter": PainterRoute}


# ---------------------------------------------------------------------------------------------
# Timing


def views(verts: np.ndarray) -> list[np.ndarray]:
    """Frontal and 3/4 (45 degrees of yaw) copies of the mesh."""
    return [verts, R.rotate_y(verts, YAW_3_4)]


def time_renders(route, verts, faces, cam, count: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its threads) for `count` renders
    alternating the frontal and 3/4 views."""
    meshes = views(verts)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        route(meshes[i % 2], faces, cam)
    return time.perf_counter() - start, time.process_time() - cpu


_worker = {}


def _worker_init(route_key, size, verts, faces, cam):
    _worker.update(route=ROUTES[route_key](size), verts=verts, faces=faces, cam=cam)
    time_renders(_worker["route"], verts, faces, cam, 2)  # warm-up


def _worker_run(count: int) -> tuple[float, float]:
    return time_renders(_worker["route"], _worker["verts"], _worker["faces"], _worker["cam"], count)


class Timing:
    """One route's figures, gathered round-robin with the other routes' (so that a burst of load
    from other jobs does not fall on one route alone)."""

    def __init__(self, key, size, verts, faces, cam, count, workers=2):
        self.key, self.count, self.workers = key, count, workers
        self.args = (verts, faces, cam)
        self.route = ROUTES[key](size)
        time_renders(self.route, verts, faces, cam, 2)  # warm-up (GL compiles its shaders here)
        # spawn: no GL context or thread pool inherited from this process
        self.pool = mp.get_context("spawn").Pool(workers, _worker_init, (key, size, *self.args))
        self.pool.map(_worker_run, [1] * workers)  # all workers up
        self.one, self.cpu_ms, self.two = [], [], []

    def run_once(self):
        wall, cpu = time_renders(self.route, *self.args, self.count)
        self.one.append(self.count / wall)
        self.cpu_ms.append(1e3 * cpu / self.count)
        share = self.count // self.workers
        start = time.perf_counter()
        self.pool.map(_worker_run, [share] * self.workers)
        self.two.append(self.workers * share / (time.perf_counter() - start))

    def close(self):
        self.pool.close()
        self.pool.join()


def summary(rates: list[float]) -> str:
    return f"best {max(rates):7.1f}/s  median {np.median(rates):7.1f}/s"


# ---------------------------------------------------------------------------------------------


def gl_available() -> str | None:
    """None if the GL route can run here, else why not."""
    try:
        GLRoute(8)
        return None
    except Exception as error:  # noqa: BLE001 - any failure means the route is unavailable
        return f"{type(error).__name__}: {error}".splitlines()[0]


def compare_to_gl(verts, faces, cam, size) -> str:
    """Agreement of the NumPy and GL renders of the same view (an independent rasteriser)."""
    numpy_result = R.render(verts, faces, cam, size)
    image, face, depth = GLRoute(size)(verts, faces, cam, with_depth=True)
    both = numpy_result.mask & (face >= 0)
    either = numpy_result.mask | (face >= 0)
    same_face = (numpy_result.face_index == face)[both].mean()
    diff = np.abs(numpy_result.image.astype(int) - image.astype(int))[both]
    dz = np.abs(numpy_result.depth[both] - depth[both]).max()
    return (f"mask IoU {both.sum() / either.sum():.4f}, same triangle at {100 * same_face:.2f}% "
            f"of common pixels, colour |diff| mean {diff.mean():.3f} max {diff.max()} (of 255), "
            f"depth |diff| max {dz:.2e}")


def save_png(path, verts, faces, cam, size, with_gl: bool) -> None:
    import cv2
    rows = [[R.render(m, faces, cam, size, background=BACKGROUND).image for m in views(verts)]]
    rows[0].append(R.render(views(verts)[1], faces, cam, size, background=BACKGROUND,
                            supersample=3).image)
    if with_gl:
        gl = GLRoute(size)
        gl_images = []
        for mesh in views(verts):
            image, face = gl(mesh, faces, cam)
            gl_images.append(np.where((face >= 0)[..., None], image, np.uint8(BACKGROUND)))
        rows.append(gl_images
                    + [R.side_view(verts, faces, cam, size, background=BACKGROUND).image])
    grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    cv2.imwrite(str(path), grid[:, :, ::-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renders", type=int, default=200, help="renders per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="/tmp/render_speed_head.png", help="PNG of the head")
    parser.add_argument("--routes", default="numpy,numpy-cull,numpy-ss2,gl,painter")
    args = parser.parse_args(argv)

    verts, faces, mesh_name = load_head()
    cam = fit_camera(verts)
    size = args.size
    print(f"mesh: {mesh_name}: {len(verts)} vertices, {len(faces)} faces; {size} x {size}; "
          f"cam {np.round(cam, 3).tolist()}; views frontal and {YAW_3_4:g} degrees of yaw")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    gl_missing = gl_available()
    if gl_missing:
        print(f"OpenGL route unavailable: {gl_missing}")
    else:
        print(f"OpenGL renderer: {GLRoute(8).renderer}")
        print(f"numpy vs OpenGL, frontal: {compare_to_gl(verts, faces, cam, size)}")
        print(f"numpy vs OpenGL, 3/4:     {compare_to_gl(views(verts)[1], faces, cam, size)}")

    keys = [k for k in args.routes.split(",") if not (k == "gl" and gl_missing)]
    timings = {k: Timing(k, size, verts, faces, cam,
                         args.renders if k != "painter" else max(20, args.renders // 5))
               for k in keys}
    try:
        for _ in range(args.repeats):
            for timing in timings.values():
                timing.run_once()
    finally:
        for timing in timings.values():
            timing.close()
    results = {}
    for key, t in timings.items():
        label = t.route.name + {"numpy-cull": ", cull_backfaces",
                                "numpy-ss2": ", supersample=2"}.get(key, "")
        results[key] = (t.one, t.two)
        print(f"{label}\n    1 process:   {summary(t.one)}   (CPU {np.median(t.cpu_ms):.1f} ms per"
              f" render, all threads)\n    2 processes: {summary(t.two)}")

    print(f"machine: load average {os.getloadavg()[0]:.2f} at end")
    if "numpy" in results:
        one, two = (np.median(r) for r in results["numpy"])
        if "painter" in results:
            print(f"numpy / painter baseline (1 process, medians): "
                  f"{one / np.median(results['painter'][0]):.1f}x")
        if "gl" in results:
            print(f"numpy / OpenGL (1 process, medians): {one / np.median(results['gl'][0]):.2f}x")
        met = "met" if one >= TARGET_PER_SECOND else "NOT met"
        met2 = "met" if two >= TARGET_PER_SECOND else "NOT met"
        per_core = 1e3 / np.median(timings["numpy"].cpu_ms)
        print(f"target {TARGET_PER_SECOND:g} renders/s (default numpy renderer, medians): "
              f"1 process {one:.0f}/s: {met}; 2 processes {two:.0f}/s: {met2}; from CPU time "
              f"(what other jobs' load does not change much): {per_core:.0f}/s per core")
    save_png(args.out, verts, faces, cam, size, with_gl=not gl_missing)
    print(f"saved {args.out} (NumPy: frontal, 3/4, 3/4 with supersample=3"
          f"{'; below: OpenGL frontal, 3/4, then NumPy side_view' if not gl_missing else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
