"""Space groups from powder patterns, trained on synthetic crystals generated on the fly.

After Schopmans, Reiser & Friederich, *Digital Discovery* (2023): crystals are drawn at
random from each space group's Wyckoff positions (:mod:`.generator`), their powder
patterns simulated in bulk (:mod:`.simulator`), and a 1-D ResNet (:mod:`.model`) is
trained online on the stream (:mod:`.training`).

This package imports nothing heavy at load; PyTorch, pyxtal and spglib are imported by
the submodules that need them (extras ``ml`` and ``classify``).
"""

from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system

__all__ = ["CRYSTAL_SYSTEMS", "crystal_system"]
