"""lightning_tru: multimodal recommenders and verifiable unlearning on PyTorch Lightning."""

__version__ = "0.1.0"
