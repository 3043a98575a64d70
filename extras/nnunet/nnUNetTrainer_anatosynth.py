"""Short nnU-Net v2 trainers for trying anatosynth's weights on a CPU (installed by ``make nnunet``).

nnU-Net finds a trainer (``nnUNetv2_train ... -tr NAME``) by importing the modules under
``nnunetv2/training/nnUNetTrainer/``, which is where its documentation says custom trainers go; ``make nnunet``
copies this file there. It sits at the top of that folder on purpose: nnU-Net searches top-level modules before
subpackages, and its ``primus`` subpackage imports timm, which needs torchvision, which has no wheel for a
CPU-only torch here; so ``-tr nnUNetTrainer_1epoch`` fails on such a machine while these are found first.

- ``nnUNetTrainer_anatosynthCPU``: one epoch of 20 training and 4 validation iterations, no mirroring (in
  augmentation or in the final validation's test-time augmentation): a smoke run of the whole chain, minutes on
  2 CPU cores, not a model to use.
- ``nnUNetTrainer_anatosynthCPU_10epochs``: the same for 10 epochs.
"""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_anatosynthCPU(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        import torch

        super().__init__(plans, configuration, fold, dataset_json, device if device is not None else torch.device("cpu"))
        self.num_epochs = 1
        self.num_iterations_per_epoch = 20
        self.num_val_iterations_per_epoch = 4

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class nnUNetTrainer_anatosynthCPU_10epochs(nnUNetTrainer_anatosynthCPU):
    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10
