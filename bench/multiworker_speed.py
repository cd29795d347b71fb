"""Training images per second on one worker against two MultiWorkerMirroredStrategy workers on
this machine, in one run:

    python bench/multiworker_speed.py [--data DIR] [--backbone resnet50] [--image_size 128]
                                      [--steps 30] [--rings_per_batch 4] [--ring_size 4]

Every configuration trains the same global batch with `train.py` (its own progress lines give the
rate: images of the global batch per second, the first interval left out as tracing):
  1 worker             --distribute none, both cores (the baseline)
  2 workers            two processes on 127.0.0.1 sharing both cores
  1 worker, 1 core     taskset to one core
  2 workers, 1 core    each worker on its own core: the ideal is twice the line above; what it
                       falls short is the price of the collectives (gradients, BatchNorm statistics)
                       and of waiting for the slower worker.
Two workers on two shared cores cannot be faster than one worker using both: there is no
speed-up to expect here, only the overhead to measure. Without --data, a small synthetic dataset
is rendered into a temporary folder first.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _rate(text: str) -> float:
    rates = [float(m) for m in re.findall(r"^step \d+/\d+ .* ([\d.]+) img/s$", text, re.M)]
    if len(rates) < 2:
        raise RuntimeError(f"too few progress lines to time:\n{text[-2000:]}")
    return statistics.median(rates[1:])


def _train(args, work: Path, name: str, workers: int, cores: list[str] | None) -> float:
    out = work / name
    flags = [sys.executable, str(ROOT / "train.py"), "--data", args.data, "--out", str(out),
             "--backbone", args.backbone, "--image_size", str(args.image_size),
             "--ring_size", str(args.ring_size), "--rings_per_batch", str(args.rings_per_batch),
             "--num_steps", str(args.steps), "--checkpoint_every", str(args.steps),
             "--log_every", str(args.log_every), "--jit_compile", "false", "--noexport_saved_model"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if workers == 1 and cores is None:
        procs = [subprocess.Popen([*flags, "--distribute", "none"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)]
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(workers)]}
        procs = []
        for i in range(workers):
            pin = ["taskset", "-c", cores[i]] if cores else []
            worker_env = {**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                          "task": {"type": "worker", "index": i}})}
            mode = ["--distribute", "multiworker"] if workers > 1 else ["--distribute", "none"]
            procs.append(subprocess.Popen([*pin, *flags, *mode], env=worker_env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=3600) for p in procs]
    for p, (_, err) in zip(procs, results):
        if p.returncode:
            raise RuntimeError(f"{name}: train.py exited {p.returncode}: {err.strip().splitlines()[-1:]}")
    shutil.rmtree(out, ignore_errors=True)
    return _rate(results[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset folder (default: render 30 identities x 4 images)")
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "tiny"])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--ring_size", type=int, default=4)
    parser.add_argument("--rings_per_batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log_every", type=int, default=5)
    args = parser.parse_args()
    cores = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="multiworker_bench_") as tmp:
        work = Path(tmp)
        if args.data is None:
            args.data = str(work / "data")
            subprocess.run([sys.executable, "-m", "ringnet_tf.data.synthetic", "--out", args.data,
                            "--identities", "30", "--images-per-identity", "4", "--size",
                            str(args.image_size), "--seed", "3"], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        images = args.ring_size * args.rings_per_batch
        print(f"{args.backbone} at {args.image_size} px, global batch {args.rings_per_batch} rings x "
              f"{args.ring_size} = {images} images, {args.steps} steps, {len(cores)} cores", flush=True)
        rows = [("1 worker", 1, None), ("2 workers", 2, None)]
        if len(cores) >= 2:
            first, second = sorted(cores)[:2]
            rows += [("1 worker, 1 core", 1, [str(first)]), ("2 workers, 1 core each", 2, [str(first), str(second)])]
        rates = {}
        for name, workers, pin in rows:
            rates[name] = _train(args, work, name.replace(" ", "_").replace(",", ""), workers, pin)
            print(f"  {name:24s} {rates[name]:7.2f} img/s", flush=True)
    print(f"2 workers / 1 worker (shared cores): {rates['2 workers'] / rates['1 worker']:.2f}")
    if "1 worker, 1 core" in rates:
        scaling = rates["2 workers, 1 core each"] / rates["1 worker, 1 core"]
        print(f"2 workers on a core each / 1 worker on one core: {scaling:.2f} (ideal 2.00; "
              f"{100 * (1 - scaling / 2):.0f}% lost to communication and waiting)")


if __name__ == "__main__":
    main()
