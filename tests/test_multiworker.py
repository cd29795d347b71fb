"""Training on two real workers (issue 16): two `train.py` processes with their own TF_CONFIG on
127.0.0.1 ports, a tiny backbone on tiny rings, CPU.

The shard rule is checked in-process on both dataset forms (each global batch split across the
input pipelines, nothing twice, nothing skipped); the processes show that a step on two workers
equals the step of one worker with the same global batch (train.py's run with the same flags, in
the test's process), that only the chief writes, and that a killed worker stops the run with one
clear line and a rerun resumes from the last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ringnet_tf.data import dataset as D
from ringnet_tf.data.rings import RingConfig, Shard, open_rings
from tests.conftest import make_tiny_dataset, make_training_root

ROOT = Path(__file__).parents[1]
TIMEOUT = 240  # s: every process is bounded


def _pipelines(path, cfg: RingConfig, count: int, batches: int, start_ring: int = 0) -> list[list[dict]]:
    per = cfg.rings_per_batch // count
    return [[{k: v.numpy() for k, v in b.items()}
             for b in open_rings(path, cfg, start_ring, shard=Shard(p, count, per)).take(batches)]
            for p in range(count)]


@pytest.mark.parametrize("form", ["manifest", "tfrecords"])
def test_each_global_batch_is_split_across_the_input_pipelines(tmp_path, form):
    ids = [f"p{i}" for i in range(5) for _ in range(3)]
    make_tiny_dataset(tmp_path / "d", ids, size=32)
    path = tmp_path / "d" if form == "manifest" else D.write_tfrecords(tmp_path / "d", num_shards=2)
    cfg = RingConfig(ring_size=3, rings_per_batch=4, image_size=32, seed=5)
    whole = [{k: v.numpy() for k, v in b.items()} for b in open_rings(path, cfg, start_ring=4).take(3)]
    parts = _pipelines(path, cfg, 2, 3, start_ring=4)
    for step, batch in enumerate(whole):
        assert parts[0][step]["images"].shape[0] == parts[1][step]["images"].shape[0] == 2
        for key in batch:  # pipeline 0 trains the first half of each global batch, pipeline 1 the rest
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=f"step {step}, {key}")
    # Four pipelines of one ring each: still the same rings, in the same places.
    quarters = _pipelines(path, cfg, 4, 1, start_ring=4)
    np.testing.assert_array_equal(np.concatenate([q[0]["images"] for q in quarters]), whole[0]["images"])


def test_a_global_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="cannot be split into 3"):
        Shard(0, 3, 1).block(4)
    with pytest.raises(ValueError, match="not a multiple of the per-replica batch 3"):
        Shard(0, 2, 3).block(4)


# ----------------------------------------------------------------------------- two processes

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _flags(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(ROOT / "train.py"), "--data", str(root / "data"), "--val_data", str(root / "val"),
            "--flame_model", str(root / "flame"), "--image_size", "32", "--backbone", "tiny",
            "--num_shape", "10", "--num_expression", "5", "--dropout", "0", "--ring_size", "3",
            "--rings_per_batch", "4", "--jit_compile", "false", "--log_every", "1", "--val_steps", "1",
            "--noexport_saved_model", "--out", str(out), *extra]


class Workers:
    """Two train.py workers of one cluster; stdout/stderr and a private TMPDIR each."""

    def __init__(self, root: Path, out: Path, name: str, *extra: str):
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        self.logs, self.tmp, self.procs = [], [], []
        for i in range(2):
            tmp = root / f"{name}.tmp{i}"
            tmp.mkdir()
            env = {**os.environ, "TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "2",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            out_f, err_f = open(root / f"{name}.out{i}", "w+"), open(root / f"{name}.err{i}", "w+")
            self.logs.append((out_f, err_f))
            self.tmp.append(tmp)
            self.procs.append(subprocess.Popen(
                [sys.executable, *_flags(root, out, "--distribute", "multiworker", *extra)],
                cwd=ROOT, env=env, stdout=out_f, stderr=err_f))

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        """Ends every worker still running (a test that failed half-way leaves none behind)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def text(self, i: int, stream: int = 0) -> str:
        f = self.logs[i][stream]
        f.flush()
        f.seek(0)
        return f.read()


def _step_losses(text: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^step (\d+)/\d+ .*?\bloss ([\d.e+-]+)", text, re.M)}


def _weights(ckpt: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(ckpt))
    return {k: reader.get_tensor(k) for k, dtype in reader.get_variable_to_dtype_map().items()
            if dtype.is_floating and k.startswith("net/")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiworker")
    make_training_root(root)
    return root


def _one_worker_run(root: Path, *extra: str) -> tuple[int, str, str]:
    """train.py's run with `_flags` and `extra`, in this process: the flags parsed by train.py's
    own parser into its TrainConfig, then `train_lib.run` as train.py's main calls it (the process
    start-up is all this leaves out). Returns (0, stdout, "") or (1, stdout, the traceback)."""
    import io
    import traceback

    import train
    from ringnet_tf.train_lib import run

    log = io.StringIO()
    train.F.unparse_flags()
    try:
        train.F(["train.py", *_flags(root, root / "one", *extra)[1:]])
        config = train.config_from_flags()
        run(config, stream=log)
    except Exception:  # noqa: BLE001  (reported by the test that uses the run)
        return 1, log.getvalue(), traceback.format_exc()
    finally:
        train.F.unparse_flags()
    return 0, log.getvalue(), ""


# One two-worker run serves every process test (each train.py process is seconds of TensorFlow
# start-up on a shared 2-core machine): a worker is killed after its fourth step, and a rerun of
# both workers finishes the run; while the rerun goes on, a one-worker run of the same global batch
# trains in this process (the same flags through train.py's parser and run).
FIRST_STEPS = 4  # compared with one worker; checkpoints every 2 steps


@pytest.fixture(scope="module")
def killed_and_resumed(root):
    """Phase 1: two workers (--num_steps 100000); worker 1 is killed once the chief has written
    ckpt-4, and the chief's exit code, its wait and the weights of its ckpt-2 and ckpt-4 are kept.
    Phase 2: both workers rerun with the same command to the newest checkpoint + 2; meanwhile one
    worker (--num_steps 4, --distribute none) with the same global batch (4 rings of 3 images)
    trains in this process, its ckpt-2 and ckpt-4 kept."""
    out = root / "killed"
    workers = Workers(root, out, "killed", "--num_steps", "100000", "--checkpoint_every", "2")
    two_weights = {}
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoints" / f"ckpt-{FIRST_STEPS}.index").exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in workers.procs), \
                workers.text(0, 1)[-2000:] + workers.text(1, 1)[-2000:]
            if 2 not in two_weights and (out / "checkpoints" / "ckpt-2.index").exists():
                # Read at once: the run goes on until the kill, and ckpt-2 is deleted at ckpt-8.
                with contextlib.suppress(tf.errors.OpError):  # (read again if caught mid-write)
                    two_weights[2] = _weights(out / "checkpoints" / "ckpt-2")
            time.sleep(0.05)
        workers.procs[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        code = workers.procs[0].wait(timeout=120)
        waited = time.monotonic() - started
        for step in (2, FIRST_STEPS):  # ckpt-4 outlives the kill: deleting it takes ckpt-10
            if step not in two_weights:
                two_weights[step] = _weights(out / "checkpoints" / f"ckpt-{step}")
    finally:
        workers.kill()
    last = (workers.text(0, 1).strip().splitlines() or [""])[-1]
    newest = int(m.group(1)) if (m := re.search(r"ckpt-(\d+)", last)) else FIRST_STEPS
    again = Workers(root, out, "again", "--num_steps", str(newest + 2), "--checkpoint_every", "2")
    try:
        one = _one_worker_run(root, "--num_steps", str(FIRST_STEPS), "--checkpoint_every", "2",
                              "--distribute", "none")
    except BaseException:
        again.kill()
        raise
    codes = again.wait()
    one_weights = ({s: _weights(root / "one" / "checkpoints" / f"ckpt-{s}") for s in (2, FIRST_STEPS)}
                   if one[0] == 0 else None)
    return {"killed": workers, "code": code, "waited": waited, "last": last, "newest": newest,
            "two_weights": two_weights, "one": one, "one_weights": one_weights,
            "again": again, "again_codes": codes, "out": out}


def test_two_workers_take_the_step_one_worker_takes(killed_and_resumed):
    run = killed_and_resumed
    returncode, one_out, one_err = run["one"]
    assert returncode == 0, one_err[-2000:]
    losses_two, losses_one = _step_losses(run["killed"].text(0)), _step_losses(one_out)
    # Every step is logged but the first (its time holds the tracing); Keras' loss is the epoch's
    # running mean, so step 2's covers step 1.
    assert sorted(losses_one) == list(range(2, FIRST_STEPS + 1))
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-4), step
    for step in (2, FIRST_STEPS):
        a, b = run["two_weights"][step], run["one_weights"][step]
        assert a.keys() == b.keys() and len(a) > 10
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=f"step {step}: {k}")
    # The weights did move: the comparison is not between two initialisations.
    first, second = run["two_weights"][2], run["two_weights"][FIRST_STEPS]
    assert max(float(np.abs(first[k] - second[k]).max()) for k in first) > 1e-4


def test_a_killed_worker_stops_the_run_and_a_rerun_resumes(killed_and_resumed):
    run = killed_and_resumed
    assert run["code"] == 4, run["killed"].text(0, 1)[-2000:]
    last = run["last"]
    assert re.fullmatch(r"error: worker 0: lost contact with another worker \(\w+\); training stopped, the "
                        r"newest checkpoint is .*ckpt-\d+; rerun every worker with the same command to resume", last), last
    assert run["waited"] < 120
    newest, again, out = run["newest"], run["again"], run["out"]
    assert newest >= FIRST_STEPS
    assert run["again_codes"] == [0, 0], again.text(0, 1)[-2000:] + again.text(1, 1)[-2000:]
    text = again.text(0)
    assert f"resuming {out} at step {newest} (ckpt-{newest})" in text
    steps = sorted(_step_losses(text))
    assert steps and steps[0] > newest and steps[-1] == newest + 2  # the step count continues
    assert f"done: {newest + 2} steps; wrote" in text
    assert again.text(1).strip() == f"done: {newest + 2} steps (worker 1; the chief writes the run)"


def test_only_the_chief_writes(killed_and_resumed):
    run = killed_and_resumed
    assert run["again_codes"] == [0, 0]
    out, newest, again = run["out"], run["newest"], run["again"]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    kept = sorted(f"checkpoints/ckpt-{s}.{ext}" for s in range(newest + 2, 0, -2)[:3]
                  for ext in ("data-00000-of-00001", "index"))
    assert [f for f in files if not f.startswith("tensorboard/")] == [
        "checkpoints/checkpoint", *kept, "config.json", "ringnet.keras"]
    # One events file per chief run (the killed one and the rerun), none from worker 1.
    assert len([f for f in files if f.startswith("tensorboard/")]) == 2
    assert not [f for f in files if f.endswith(".tmp") or ".tmp" in Path(f).name]
    for tmp in again.tmp:  # the non-chief's private checkpoint folder is gone, the chief made none
        assert list(tmp.iterdir()) == []
    assert again.text(1).strip() == f"done: {newest + 2} steps (worker 1; the chief writes the run)"
    assert again.text(0).splitlines()[-1].startswith(f"done: {newest + 2} steps; wrote ")
