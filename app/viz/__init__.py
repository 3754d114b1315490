"""Figures of the sub-pixel layer, drawn with Pillow and numpy only (no matplotlib when serving)."""

from __future__ import annotations

from app.viz.channels import render_channels
from app.viz.kernels import render_kernels, render_subpixel_map

__all__ = ["render_channels", "render_kernels", "render_subpixel_map"]
