"""sgnet-lightning: precision-first brain tumour segmentation experiments on PyTorch Lightning."""

__version__ = "0.1.0"
