"""Keep vision packages out of a text-only rollout replica.

transformers imports torchvision whenever it is installed (vLLM depends on it) as soon as anything
loads `modeling_utils`: its loss functions pull in its image utilities. An HF-engine replica serves
causal language models only and never calls them, yet paid about 3.7 CPU-seconds of its ~9 s start-up
import for it, on every replica start, restart and retry.

`skip_vision_packages()` marks those packages as absent in this process (`sys.modules[name] = None`:
`import` raises ImportError and `importlib.util.find_spec` answers None, which is how transformers checks).
A model class that does need torchvision then fails to load with transformers' own "requires
torchvision" error. The vLLM engine keeps them: its multimodal paths import torchvision.
"""

from __future__ import annotations

import sys

VISION_PACKAGES = ("torchvision",)
"""Imported by transformers' text models only through code paths an HF-engine replica never runs."""


def skip_vision_packages() -> bool:
    """Mark VISION_PACKAGES absent for this process; False (nothing changed) when transformers or one of
    them is already imported, since transformers has then made its choice."""
    if "transformers" in sys.modules or any(sys.modules.get(name) is not None for name in VISION_PACKAGES):
        return False
    for name in VISION_PACKAGES:
        sys.modules[name] = None  # type: ignore[assignment]
    return True
