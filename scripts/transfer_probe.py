"""Host → GPU copies of what the service sends, the way ``app.engine.device.transfer`` makes them against the others.

``transfer`` pins each host tensor (PyTorch's caching host allocator keeps the pinned
blocks for reuse) and copies it with ``non_blocking=True``. PyTorch's guide on
``pin_memory()`` and ``non_blocking`` finds that up to twice as slow as a plain
``.to(device)``, and a plain copy from pageable memory makes the host wait for the work
already queued on the stream. This times, for a batch of model windows and the planes of a
640×360 upload and of a 1080p frame, the median of ``--repeat`` copies, each:

- ``alone``: the copy and a synchronize, on an idle GPU;
- ``behind work``: host time of the call alone, issued behind ~``--busy-ms`` of queued kernels
  (a model call of another batch), which a pageable copy waits for and a pinned one does not.

Prints a table; needs a CUDA device (the device check runs it: ``scripts/device_check.sh``).

    python scripts/transfer_probe.py --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.engine.device import resolve_device, transfer

# (what, shape, dtype): a full batch of 96-px windows (halo 4), the 8-bit planes of a 640×360 upload and a 1080p frame
PAYLOADS = (("64 windows of 104² (fp32)", (64, 1, 104, 104), torch.float32),
            ("640×360 planes (uint8)", (3, 360, 640), torch.uint8),
            ("1920×1080 planes (uint8)", (3, 1080, 1920), torch.uint8))


def ways(device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "transfer (pinned, non_blocking)": lambda t: transfer(t, device),
        ".to(device)": lambda t: t.to(device),
        ".to(device, non_blocking=True)": lambda t: t.to(device, non_blocking=True),
    }


def busy_work(device: torch.device, ms: float) -> Callable[[], None]:
    """Queue about ``ms`` of kernels (matmuls sized on this GPU) without waiting for them."""
    a = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize(device)
    per = (time.perf_counter() - started) / 10 * 1000
    count = max(1, round(ms / per))

    def queue() -> None:
        for _ in range(count):
            a @ a

    return queue


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def behind(copy: Callable[[torch.Tensor], torch.Tensor], host: torch.Tensor, queue: Callable[[], None],
           device: torch.device) -> float:
    """Host milliseconds of one copy issued behind queued work (then waits for all of it)."""
    queue()
    started = time.perf_counter()
    copy(host)
    spent = (time.perf_counter() - started) * 1000
    torch.cuda.synchronize(device)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--busy-ms", type=float, default=5.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    device = resolve_device("cuda")
    queue = busy_work(device, args.busy_ms)
    print(f"| payload | way | alone, ms | behind {args.busy_ms:g} ms of work: host ms |")
    print("| --- | --- | --- | --- |")
    for what, shape, dtype in PAYLOADS:
        host = (torch.rand(shape) * 255).to(dtype)
        for name, copy in ways(device).items():
            alone = median_ms(lambda c=copy, h=host: (c(h), torch.cuda.synchronize(device)), args.repeat)
            behind_ms = [behind(copy, host, queue, device) for _ in range(max(6, args.repeat // 5))][1:]
            print(f"| {what} | {name} | {alone:.3f} | {statistics.median(behind_ms):.3f} |")

if __name__ == "__main__":
    main()
