"""``python -m app.cli.experiment``: experiments that put the papers' claims to the test.

``section3``: the note's Section 3 (LR-space against HR-space networks at the
same multiply-adds per output pixel; see docs/section3.md). Example (the
small-budget study in docs/section3.md, 30-40 min on a loaded 2-core machine)::

    python -m app.cli.experiment section3 --train ../shared/datasets/train/t91 ../shared/datasets/train/bsd200 \\
        --val ../shared/datasets/val/set5 --scales 2 3 --depths 3 5 --steps 1600 --jobs 2 \\
        --out runs/section3 --publish docs

Interrupt it at any time: the same command resumes every unfinished run from
its checkpoint and reuses the finished ones, the step-time calibration and the
timings (delete ``OUT/timing.json`` to time again, or ``OUT`` to start over).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from app.experiments.section3 import DEFAULT_WIDTHS, Section3Config, publish, run_all


def _widths(items: list[str]) -> dict[int, int]:
    widths = dict(DEFAULT_WIDTHS)
    for item in items:
        scale, _, width = item.partition("=")
        widths[int(scale)] = int(width)
    return widths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="experiment", required=True)
    s = sub.add_parser("section3", help="LR-space vs HR-space networks at matched multiply-adds (the note's §3)")
    s.add_argument("--train", type=Path, nargs="+", required=True, help="folders of HR training images")
    s.add_argument("--val", type=Path, required=True, help="folder of HR validation images (scored, and timed)")
    s.add_argument("--out", type=Path, default=Path("runs/section3"), help="checkpoints, results, table, plots")
    s.add_argument("--scales", type=int, nargs="+", default=[2, 3])
    s.add_argument("--depths", type=int, nargs="+", default=[3, 5], help="convolutions per network")
    s.add_argument("--width", nargs="*", default=[], metavar="R=N",
                   help=f"LR maps per scale, a multiple of r² (default {DEFAULT_WIDTHS}); the HR net gets N/r²")
    s.add_argument("--kernel", type=int, default=3, help="LR kernel size k (the HR net's hidden kernels are k·r)")
    s.add_argument("--activation", default="tanh", choices=["tanh", "relu", "prelu"])
    s.add_argument("--steps", type=int, default=1600, help="equal-patches budget: Adam steps per network")
    s.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="equal-time budget per network (default: the faster network's calibrated time for --steps)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--patch", type=int, default=16, help="LR patch size (output pixels), halo excluded")
    s.add_argument("--stride", type=int, default=12, help="LR stride between patches")
    s.add_argument("--rescales", type=float, nargs="+", default=[1.0])
    s.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (cosine decay per run)")
    s.add_argument("--lr-min", type=float, default=1e-5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--calibration-steps", type=int, default=15, help="timed training steps per network")
    s.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    s.add_argument("--bench-repeats", type=int, default=9, help="timed passes over the frames per network")
    s.add_argument("--threads", type=int, default=1, help="CPU threads per process (training and timing)")
    s.add_argument("--jobs", type=int, default=1, help="training runs in parallel (processes)")
    s.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: interrupt each run after N steps
    s.add_argument("--publish", type=Path, metavar="DOCS",
                   help="copy table, JSON and plots to DOCS/section3/ and DOCS/section3_*.png")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Section3Config(
        train_dirs=args.train, val_dir=args.val, out=args.out, scales=tuple(args.scales), depths=tuple(args.depths),
        widths=_widths(args.width), kernel=args.kernel, activation=args.activation, steps=args.steps,
        time_budget=args.time_budget, batch_size=args.batch_size, patch=args.patch, stride=args.stride,
        rescales=tuple(args.rescales), lr=args.lr, lr_min=args.lr_min, seed=args.seed,
        calibration_steps=args.calibration_steps, checkpoint_every=args.checkpoint_every,
        bench_repeats=args.bench_repeats, jobs=args.jobs, threads=args.threads, stop_after=args.stop_after,
    )
    report = run_all(cfg)
    if report is None:
        return 1
    print((cfg.out / "table.md").read_text())
    if args.publish:
        for path in publish(cfg.out, args.publish):
            logging.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
