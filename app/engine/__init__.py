"""The serving engine: device handling, the model runner, and the tile-batching worker.

Tensors in, tensors out: nothing here decodes images or speaks HTTP.
"""
