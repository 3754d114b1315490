"""``python -m app.cli.figures``: the README's pictures, from the shipped models.

Writes, for every model in the store, ``kernels_x{r}.png`` (what ``GET
/kernels/deconv.png`` serves) and ``channels_x{r}.png`` (``GET /debug/channels``
on the built-in sample image), and ``training_curves.png`` from the training
history recorded in the manifests (matplotlib, from the ``train`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from app.datasets import luma
from app.store import DEFAULT_STORE
from app.store.registry import LoadedModel, discover
from app.viz import render_channels, render_kernels

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "app" / "assets" / "sample.png"


def training_curves(models: dict[int, LoadedModel], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for scale, loaded in sorted(models.items()):
        training = loaded.manifest.training
        seen, losses, psnrs, boundaries = [], [], [], []
        done = 0.0  # training patches seen before the current phase, in millions
        for phase in training.phases() if training else []:
            per_epoch = phase.steps / max(phase.epochs, 1) * phase.batch_size / 1e6
            first = phase.history[0]["epoch"] - 1 if phase.history else 0
            for h in phase.history:
                seen.append(done + (h["epoch"] - first) * per_epoch)
                losses.append(h["loss"])
                psnrs.append(h.get("val_psnr", float("nan")))
            done += (phase.epochs - first) * per_epoch
            boundaries.append(done)
        if not seen:
            continue
        line = axes[0].plot(seen, losses, label=f"x{scale}")[0]
        axes[1].plot(seen, psnrs, color=line.get_color(), label=f"x{scale}")
        for b in boundaries[:-1]:
            for ax in axes:
                ax.axvline(b, color=line.get_color(), linestyle="--", linewidth=0.6, alpha=0.5)
        bicubic = loaded.manifest.metrics[0].bicubic_psnr if loaded.manifest.metrics else None
        if bicubic:
            axes[1].axhline(bicubic, color=line.get_color(), linestyle=":", linewidth=1)
    xlabel = "training patches seen (millions); dashed: a new phase (warm start)"
    axes[0].set(xscale="log", yscale="log", xlabel=xlabel, ylabel="training MSE (Y in [0, 1])", title="loss")
    axes[1].set(xscale="log", xlabel=xlabel, ylabel="Set5 Y-PSNR (dB)", title="validation (dotted: bicubic)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = discover(args.store)
    with Image.open(SAMPLE) as im:
        sample = luma(im)
    for scale, loaded in sorted(models.items()):
        model = loaded.model
        render_kernels(model.subpixel_layer(), model.last_layer_deconv()).save(args.out / f"kernels_x{scale}.png")
        render_channels(model, sample)[0].save(args.out / f"channels_x{scale}.png")
    training_curves(models, args.out / "training_curves.png")
    print(f"wrote figures for scales {sorted(models)} to {args.out}")


if __name__ == "__main__":
    main()
