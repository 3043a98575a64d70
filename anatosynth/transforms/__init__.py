"""Between a real scan and a network, both ways: preprocessing, sliding-window inference, post-processing.

Fine-tuning (``train``) and evaluation (``evaluate``) both use these, so they sit below both (MONAI keeps
the same pieces in ``monai.transforms`` and ``monai.inferers``):

* :mod:`~anatosynth.transforms.preprocess`: RAS, target spacing, intensity normalisation by modality,
  dataset label ids ↔ class indices, and the way back to each case's original grid;
* :mod:`~anatosynth.transforms.inferer`: softmax probabilities of a network over a whole image (MONAI's
  sliding-window inference with Gaussian blending);
* :mod:`~anatosynth.transforms.postprocess`: nnU-Net-style largest-connected-component post-processing.
"""
