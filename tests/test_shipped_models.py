"""The models in model_store/: valid manifests, matching hashes, and clearly better than bicubic.

Scored under the evaluation protocol on photographs that ship inside scikit-image
(a test dependency), never on the training or validation data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from app.datasets import make_pair
from app.evaluation import bicubic_upscaler, mean_score, model_upscaler, score_pairs
from app.store.manifest import Manifest
from app.store.registry import discover, sha256_of

STORE = Path(__file__).resolve().parents[1] / "model_store"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
# the issue asks for >= 1 dB over bicubic at x3; x2 and x4 must at least clearly beat it too
MARGIN_DB = {2: 1.0, 3: 1.0, 4: 0.6}


def _centre(array: object, size: int = 240) -> Image.Image:
    """A centre crop, to keep the test quick (240 is a multiple of 2, 3 and 4)."""
    image = Image.fromarray(array)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


@pytest.fixture(scope="module")
def shipped() -> dict:
    return discover(STORE)


def test_every_manifest_validates_and_hashes_match() -> None:
    manifests = sorted(STORE.glob("*.json"))
    assert manifests, "model_store/ has no manifests"
    for path in manifests:
        manifest = Manifest.model_validate_json(path.read_bytes())
        assert sha256_of(path.parent / manifest.weights) == manifest.sha256
        assert manifest.training is not None and manifest.training.wall_time_s > 0
        assert manifest.metrics and manifest.metrics[0].bicubic_psnr is not None


def test_all_three_scales_are_shipped_with_the_paper_architecture(shipped: dict) -> None:
    assert sorted(shipped) == [2, 3, 4]
    for scale, loaded in shipped.items():
        arch = loaded.manifest.architecture
        assert (arch.widths, arch.kernel_sizes, arch.activation) == ([64, 32], [5, 3, 3], "tanh")
        assert loaded.model.scale == scale


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_beats_bicubic_on_natural_photographs(shipped: dict, scale: int) -> None:
    pairs = [make_pair(_centre(getattr(skdata, name)()), scale, name) for name in PHOTOS]
    ours = mean_score(score_pairs(model_upscaler(shipped[scale].model), pairs, scale))
    bicubic = mean_score(score_pairs(bicubic_upscaler(scale), pairs, scale))
    assert ours.psnr >= bicubic.psnr + MARGIN_DB[scale], (ours, bicubic)
    assert ours.ssim > bicubic.ssim
