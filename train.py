"""Train a recommender: ``python train.py fit --config configs/train/mgcn_tiktok.yaml``."""
from lightning_tru.cli import train_cli

if __name__ == "__main__":
    train_cli()
