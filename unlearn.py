"""Answer a deletion request: ``python unlearn.py --config configs/train/mgcn_synthetic.yaml
--config configs/unlearn/tru.yaml --ckpt_path <trained.ckpt>``."""
from lightning_tru.cli import unlearn_cli

if __name__ == "__main__":
    unlearn_cli()
