"""The serving engine: device handling, the model runner, the tile-batching worker, and the device process's wire.

Tensors and 8-bit planes in and out; nothing here speaks HTTP. The one codec is
:mod:`app.engine.jpeg`, JPEG on the models' device (nvJPEG), since there the bytes
must meet the model where it runs; every other decode and encode is :mod:`app.imaging`'s.
"""
