"""`slip-superclip`: SLIP (GAT refiners + structural loss) with SuperCLIP's token classification on (weight 1).

A combination no paper has: graph structure between products and token-level supervision inside each caption. It
is exactly `--method slip --superclip-weight 1` (the SuperCLIP add-on on SLIP), under a name of its own so runs
and comparison tables say what they are; `--superclip-weight W` sets the term's weight here too.
"""
from __future__ import annotations

from typing import ClassVar

from trainer.methods.registry import register
from trainer.methods.slip import SLIP


@register
class SLIPSuperCLIP(SLIP):
    name = "slip-superclip"
    description = "SLIP + SuperCLIP's token classification (structure and token-level supervision)"
    superclip_default_weight: ClassVar[float] = 1.0
