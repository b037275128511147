"""Numbers as the command line and the study headlines print them."""
from __future__ import annotations

import math


def number(x, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits (nan, inf and -inf spelled out); anything else as str."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}g}"
    return str(x)
