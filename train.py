"""Train a recommender: ``python train.py fit --config configs/train/mgcn_tiktok.yaml``."""
import sys

from lightning_tru.cli import main, train_cli

if __name__ == "__main__":
    sys.exit(main(train_cli))
