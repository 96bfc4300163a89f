"""Answer a deletion request: ``python unlearn.py --config configs/train/mgcn_synthetic.yaml
--config configs/unlearn/tru.yaml --ckpt_path <trained.ckpt>``. Exits 2 on bad input, 3 when the
request was not answered (the ledger records it as not_reached)."""
import sys

from lightning_tru.cli import main, unlearn_cli

if __name__ == "__main__":
    sys.exit(main(unlearn_cli))
