"""The math and the model: periodic shuffling, conv ⇄ deconv, ESPCN, colour, tiling, metrics.

Pure PyTorch; nothing here knows about HTTP, files or the model store.
"""
