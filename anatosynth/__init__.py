"""anatosynth: synthetic, anatomy-informed supervised pre-training for 3D medical segmentation.

Pipeline, one sub-package per stage:
``io`` (volumes, datasets, canonical geometry) → ``bank`` (de-identified organ shapes, anchors, graph)
→ ``synth`` (anatomy-placed synthetic patches) → ``train`` (pre-training, fine-tuning)
→ ``evaluate`` (sliding-window inference, Dice/HD95) → ``experiment`` (protocols, ablations, scaling).
The command line (``anatosynth.cli``) is a thin layer on top.
"""

from anatosynth.version import __version__ as __version__  # defined once, in version.py
