"""Image I/O between HTTP and the tensor engine: bytes → checked pixels → model luma → encoded bytes."""
