"""Numeric precision choices shared by the Stylizer, the server and the training script (no torch here,
so the server's flag parsing stays light).

``auto`` is bf16 autocast on a GPU and float32 on a CPU; ``bf16`` autocasts on a CPU too, which is
about twice as fast on CPUs with bf16 units (AVX512-BF16, AMX) and slower on the others.
"""

PRECISIONS = ("auto", "bf16", "fp32")


def wants_bf16(precision: str, cuda: bool) -> bool:
    """Whether ``precision`` means bf16 autocast on this device; refuses an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and cuda)
