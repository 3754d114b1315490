"""``python -m app.cli.evaluate``: PSNR/SSIM under the protocol, bicubic and peers beside our model.

Example::

    python -m app.cli.evaluate ../shared/datasets/val/set5 --scale 3 --opencv ../shared/peers/opencv

Protocol: HR cropped to a multiple of r, LR by Pillow bicubic, Y channel
(BT.601 studio swing), both rounded to 8 bits, r pixels cropped at each
border; PSNR and SSIM (Gaussian σ = 1.5) per image, then the mean.

``--hr-fit resize`` resamples the HR image to a multiple of r instead of
cropping it, as some reimplementations do: only to read their figures beside
ours (it blurs the ground truth, +0.5 dB for bicubic at ×3 on Set5).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.datasets import HR_FITS, load_pairs, luma
from app.evaluation import Score, Upscaler, bicubic_upscaler, mean_score, model_upscaler, score_pairs
from app.store import DEFAULT_STORE
from app.store.registry import discover, load_model


def opencv_upscaler(path: Path, algorithm: str, scale: int) -> Upscaler:
    """An OpenCV ``dnn_superres`` model (needs ``opencv-contrib-python``) as an :data:`Upscaler`."""
    import cv2  # optional: benchmark/evaluation dependency only

    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(path))
    sr.setModel(algorithm, scale)

    def run(lr: Image.Image) -> torch.Tensor:
        bgr = np.ascontiguousarray(np.asarray(lr.convert("RGB"))[:, :, ::-1])
        out = sr.upsample(bgr)
        return luma(Image.fromarray(np.ascontiguousarray(out[:, :, ::-1]))) * 255.0

    return run


def upscalers(args: argparse.Namespace) -> dict[str, Upscaler]:
    found: dict[str, Upscaler] = {"bicubic": bicubic_upscaler(args.scale)}
    if args.opencv:
        for algo in ("espcn", "fsrcnn"):
            path = Path(args.opencv) / f"{algo.upper()}_x{args.scale}.pb"
            if path.is_file():
                try:
                    found[f"opencv-{algo}"] = opencv_upscaler(path, algo, args.scale)
                except ImportError:
                    print("opencv-contrib-python is not installed: skipping the OpenCV peers")
                    break
    if args.model:
        for path in args.model:
            loaded = load_model(path)
            if loaded.manifest.scale != args.scale:
                raise SystemExit(f"{path} is a x{loaded.manifest.scale} model, not x{args.scale}")
            # candidates often share a name (every run publishes espcn-x3): label them by folder too
            label = loaded.manifest.name if len(args.model) == 1 else f"{loaded.manifest.name} ({path.parent})"
            found[label] = model_upscaler(loaded.model)
    else:
        models = discover(Path(args.store))
        if args.scale not in models:
            raise SystemExit(f"no model for x{args.scale} in {args.store}")
        found[models[args.scale].manifest.name] = model_upscaler(models[args.scale].model)
    return found


def table(results: dict[str, list[Score]]) -> str:
    names = list(results)
    images = [s.name for s in next(iter(results.values()))]
    header = "| image | " + " | ".join(f"{n} PSNR / SSIM" for n in names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 1)]
    rows = [*images, "mean"]
    for i, image in enumerate(rows):
        cells = []
        for n in names:
            s = mean_score(results[n]) if image == "mean" else results[n][i]
            cells.append(f"{s.psnr:.2f} / {s.ssim:.4f}")
        label = f"**{image}**" if image == "mean" else image
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="folder of HR images")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store (the model for --scale)")
    p.add_argument("--model", type=Path, nargs="+",
                   help="manifest path(s) instead of the store's model: several are compared side by side")
    p.add_argument("--opencv", type=Path, help="folder of OpenCV dnn_superres .pb models (ESPCN/FSRCNN)")
    p.add_argument("--hr-fit", choices=HR_FITS, default="crop",
                   help="how HR sizes become multiples of r: crop (the protocol) or resize (not the protocol: "
                   "what some reimplementations do, to compare with their figures)")
    p.add_argument("--json", type=Path, help="also write the scores as JSON")
    args = p.parse_args(argv)
    pairs = load_pairs(args.folder, args.scale, args.hr_fit)
    results = {name: score_pairs(up, pairs, args.scale) for name, up in upscalers(args).items()}
    fit = "" if args.hr_fit == "crop" else ", HR resized to a multiple of r (NOT the protocol)"
    print(f"x{args.scale} on {args.folder.name} ({len(pairs)} images{fit}), Y-PSNR (dB) / SSIM\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({n: [s.__dict__ for s in r] for n, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
