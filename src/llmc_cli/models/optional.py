"""Optional libraries that cost startup time where a run does not use them.

peft imports bitsandbytes whenever it is installed, and bitsandbytes imports torch's compiler
stack: about 2 s of every ``llmc train``, ``resume`` and ``--dry-run`` process on a 2-core CPU.
A run that does not quantise and has no CUDA device never calls it, so there bitsandbytes is
marked unavailable before peft is imported, and peft and transformers take their plain paths.
"""

from __future__ import annotations

import sys


def skip_unused_bitsandbytes(quantize: str) -> bool:
    """Keep bitsandbytes out of a run that does not quantise on a machine without CUDA; True if it did."""
    if quantize != "none" or "bitsandbytes" in sys.modules or "peft" in sys.modules:
        return False  # needed, or already imported
    import torch

    if torch.cuda.is_available():
        return False  # a later QLoRA run in this process (llmc tune, the API) may need it
    sys.modules["bitsandbytes"] = None  # importlib's marker for "not importable": find_spec gives None
    return True
