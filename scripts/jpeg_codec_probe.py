"""The device JPEG codec (app/engine/jpeg.py) against Pillow, per picture: decode, encode, the header probe;
and on a GPU the tensor compose around the model (app/core/planes.py) of a 1080p answer, alone and stacked.

Issue 28 moves JPEG work to the model's device. This prints, for a 640×360 upload
and a 1920×1080 answer-sized picture (scikit-image's astronaut, quality 90, 4:2:0),
the median of ``--repeat`` calls of: Pillow's decode and encode (what the CPU path
runs), torchvision's on the CPU, and on each CUDA device with nvJPEG where there
is one (decode of a batch of ``--batch`` too), plus :func:`app.engine.jpeg.probe`.
Needs torchvision (the ``gpu`` extra); without it only Pillow and the probe run. On each
CUDA device it also times the compose of the ×3 answer of the 640×360 picture, one and
``--batch`` stacked (:func:`app.core.planes.compose_many`): issue 28 holds the compose
inside a request to what it costs alone, under 2 ms for 1080p.

    python scripts/jpeg_codec_probe.py --repeat 50
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.core import planes as tensor_planes
from app.engine import jpeg

SIZES = ((640, 360), (1920, 1080))


def median_ms(fn: Callable[[], object], repeat: int, sync: bool = False) -> float:
    fn()  # warm: first-call set-up (nvJPEG handles, libjpeg tables) is not a request's cost
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def pillow_decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im)


def pillow_encode(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="pictures per batched device decode/encode")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    usable = [d for d in devices if jpeg.available(d)]
    print(f"torch {torch.__version__}; torchvision codec on: {', '.join(map(str, usable)) or 'none'}; "
          f"{torch.get_num_threads()} CPU threads")
    photo = Image.fromarray(skdata.astronaut())
    for w, h in SIZES:
        im = photo.resize((w, h), Image.Resampling.LANCZOS)
        data = pillow_encode(im)
        print(f"\n{w}×{h}, quality 90, {len(data):,} bytes")
        print(f"  probe (header only)        {median_ms(lambda d=data: jpeg.probe(d), args.repeat):8.3f} ms")
        print(f"  Pillow decode              {median_ms(lambda d=data: pillow_decode(d), args.repeat):8.3f} ms")
        print(f"  Pillow encode              {median_ms(lambda i=im: pillow_encode(i), args.repeat):8.3f} ms")
        for device in usable:
            sync = device.type == "cuda"
            planes = jpeg.decode(data, device)
            dec = median_ms(lambda d=data, dv=device: jpeg.decode(d, dv), args.repeat, sync)
            enc = median_ms(lambda p=planes: jpeg.encode(p, 90), args.repeat, sync)
            print(f"  decode {device!s:8} (probe+tv) {dec:8.3f} ms")
            print(f"  encode {device!s:8} (tv)       {enc:8.3f} ms")
            if args.batch > 1:
                batch_dec = median_ms(lambda d=data, dv=device: jpeg.decode_batch([d] * args.batch, dv),
                                      args.repeat, sync) / args.batch
                batch_enc = median_ms(lambda p=planes: jpeg.encode_batch([p] * args.batch, 90),
                                      args.repeat, sync) / args.batch
                print(f"  ... in batches of {args.batch:<3}    {batch_dec:8.3f} ms decode, {batch_enc:.3f} ms encode "
                      "per picture")
    for device in devices[1:]:  # the tensor compose serves on GPUs only (the CPU has the compiled one)
        colour = torch.from_numpy(np.asarray(photo.resize(SIZES[0]))).permute(2, 0, 1).contiguous().to(device)
        luma = torch.rand((1, 3 * SIZES[0][1], 3 * SIZES[0][0]), device=device)
        one = median_ms(lambda c=colour, y=luma: tensor_planes.compose(c, None, y, 3), args.repeat, sync=True)
        many = median_ms(lambda c=colour, y=luma: tensor_planes.compose_many([(c, y, 3)] * args.batch),
                         args.repeat, sync=True) / max(1, args.batch)
        print(f"\ncompose ×3 {SIZES[0][0]}×{SIZES[0][1]} → 1080p on {device}: {one:.3f} ms alone, {many:.3f} ms per "
              f"picture stacked by {args.batch}")


if __name__ == "__main__":
    main()
