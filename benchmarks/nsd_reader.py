"""Benchmark: the native NSD reader on full-size session files; prints one JSON object.

Writes an NSD root whose session files have the real fsaverage size (163,842 vertices × 750
trials per hemisphere and session, random betas), a design of 10,000 images, and ROIs from the
real subject-01 Algonauts masks (``data.rois`` pointing to an Algonauts ``roi_masks`` folder,
19,004 / 20,544 challenge vertices). Each measurement runs in a fresh process so that its peak
resident memory is its own: the first read (per-session z-scoring and repeat averaging into
the response cache) for the challenge space and the whole cortex, and a second read (cache
hit). Images are not measured (the image store is shared with the other layouts). The root
is written by a separate process too, so that no measured process inherits its memory.

Usage::

    python benchmarks/nsd_reader.py                  # 3 sessions (about 3 GB of files)
    python benchmarks/nsd_reader.py --sessions 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MASKS = REPO.parent / "shared" / "data" / "algonauts_roi_masks" / "subj01"
N_VERTICES, N_TRIALS, N_SUBJECT_IMAGES, N_POOL = 163842, 750, 10000, 2000


def write_root(root: Path, n_sessions: int) -> None:
    """Full-size session files, a design and a small stimulus file under ``root``."""
    import h5py
    import nibabel as nib
    import scipy.io

    from cortexcl.data.nsd import DESIGN, STIMULI, betas_folder

    rng = np.random.default_rng(0)
    design = root / DESIGN
    design.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(design, {
        "masterordering": rng.integers(1, N_SUBJECT_IMAGES + 1, (1, 40 * N_TRIALS)),
        "subjectim": rng.integers(1, N_POOL + 1, (8, N_SUBJECT_IMAGES)),
        "stimpattern": np.ones((40, 1, N_TRIALS), dtype=np.uint8)})
    stimuli = root / STIMULI
    stimuli.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(stimuli, "w") as handle:
        handle["imgBrick"] = rng.integers(0, 255, (N_POOL, 16, 16, 3), dtype=np.uint8)
    folder = betas_folder(root, 1)
    folder.mkdir(parents=True, exist_ok=True)
    for hemisphere in ("lh", "rh"):
        for session in range(1, n_sessions + 1):
            betas = rng.standard_normal((N_VERTICES, 1, 1, N_TRIALS), dtype=np.float32)
            nib.MGHImage(betas, np.eye(4)).to_filename(
                str(folder / f"{hemisphere}.betas_session{session:02d}.mgh"))
        nib.MGHImage(rng.uniform(0, 1, (N_VERTICES, 1, 1)).astype(np.float32),
                     np.eye(4)).to_filename(str(folder / f"{hemisphere}.ncsnr.mgh"))


def measure(root: Path, space: str, cache: Path) -> dict:
    """Read subject 1 in a fresh process: seconds, peak RSS, columns."""
    code = (
        "import json, resource, time\n"
        "from cortexcl.data.nsd import load_nsd_subject\n"
        "start = time.perf_counter()\n"
        f"s = load_nsd_subject({str(root)!r}, 1, space={space!r}, rois={str(MASKS)!r}, "
        "image_size=16, progress=False)\n"
        "seconds = time.perf_counter() - start\n"
        "print(json.dumps({'seconds': seconds, 'peak_rss_gb': resource.getrusage("
        "resource.RUSAGE_SELF).ru_maxrss / 2**20, 'n_images': s.n_images, "
        "'n_vertices': {h: s.n_vertices(h) for h in ('lh', 'rh')}}))\n")
    env = {**os.environ, "CORTEXCL_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_only is not None:
        write_root(args.write_only, args.sessions)
        return
    with tempfile.TemporaryDirectory(prefix="nsd-bench-") as tmp:
        root, cache = Path(tmp) / "nsd", Path(tmp) / "cache"
        start = time.perf_counter()
        # In its own process: a child inherits its parent's peak RSS on Linux, so the parent
        # must stay small for the measurements to be their own.
        subprocess.run([sys.executable, __file__, "--sessions", str(args.sessions),
                        "--write-only", str(root)], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        written = time.perf_counter() - start
        result = {"sessions": args.sessions, "trials_per_session": N_TRIALS,
                  "surface_vertices": N_VERTICES, "write_s": round(written, 1)}
        for space in ("challenge", "cortex"):
            cold = measure(root, space, cache)
            warm = measure(root, space, cache)
            result[space] = {
                "first_read_s": round(cold["seconds"], 2),
                "first_read_s_per_session": round(cold["seconds"] / args.sessions, 2),
                "first_read_peak_rss_gb": round(cold["peak_rss_gb"], 2),
                "cached_read_s": round(warm["seconds"], 2),
                "cached_read_peak_rss_gb": round(warm["peak_rss_gb"], 2),
                "n_images": cold["n_images"], "n_vertices": cold["n_vertices"],
                "estimated_40_sessions_min": round(cold["seconds"] / args.sessions * 40 / 60,
                                                   1)}
        result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
