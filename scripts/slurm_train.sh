#!/usr/bin/env bash
# Train a recommender with DDP on a SLURM cluster: one task per GPU, Lightning reads the SLURM environment.
#   sbatch scripts/slurm_train.sh [extra LightningCLI arguments]
#   TRAIN_CONFIG=configs/train/mgcn_baby.yaml sbatch --nodes 2 scripts/slurm_train.sh --trainer.max_epochs 100
# DRY_RUN=1 prints the command each task runs (one line, shell-quoted) instead of running it.
#SBATCH --job-name=tru-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4          # = GPUs per node: Lightning requires one task per device
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

TRAIN_CONFIG=${TRAIN_CONFIG:-configs/train/mgcn_synthetic.yaml}
ACCELERATOR=${ACCELERATOR:-gpu}
DEVICES=${DEVICES:-${SLURM_NTASKS_PER_NODE:-1}}
NODES=${NODES:-${SLURM_NNODES:-1}}
PYTHON=${PYTHON:-python}

CMD=("$PYTHON" train.py fit --config "$TRAIN_CONFIG"
     --trainer.accelerator "$ACCELERATOR" --trainer.strategy ddp
     --trainer.devices "$DEVICES" --trainer.num_nodes "$NODES" "$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
srun "${CMD[@]}"
