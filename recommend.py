"""Serve a checkpoint: ``python recommend.py --config configs/train/mgcn_synthetic.yaml
--ckpt_path <model.ckpt> --output recs.tsv [--users users.txt] [--k 20] [--deletions runs/deletions]``."""
import sys

from lightning_tru.cli import main, recommend_cli

if __name__ == "__main__":
    sys.exit(main(recommend_cli))
