#!/usr/bin/env bash
# Answer a deletion request with DDP on a SLURM cluster (same layout as the training job).
#   CKPT=runs/.../best.ckpt sbatch scripts/slurm_unlearn.sh [extra unlearn.py arguments]
#   CKPT=... METHOD_CONFIG=configs/unlearn/scalegun.yaml sbatch scripts/slurm_unlearn.sh --request.share 0.01
# TRAIN_CONFIG must be the config the checkpoint was trained with. Outputs and the ledger are
# written once, by rank 0. DRY_RUN=1 prints the command each task runs instead of running it.
#SBATCH --job-name=tru-unlearn
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4          # = GPUs per node: Lightning requires one task per device
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

: "${CKPT:?set CKPT to the trained checkpoint (weights are loaded, never modified)}"
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/train/mgcn_synthetic.yaml}
METHOD_CONFIG=${METHOD_CONFIG:-configs/unlearn/tru.yaml}
ACCELERATOR=${ACCELERATOR:-gpu}
DEVICES=${DEVICES:-${SLURM_NTASKS_PER_NODE:-1}}
NODES=${NODES:-${SLURM_NNODES:-1}}
PYTHON=${PYTHON:-python}

CMD=("$PYTHON" unlearn.py --config "$TRAIN_CONFIG" --config "$METHOD_CONFIG" --ckpt_path "$CKPT"
     --trainer.accelerator "$ACCELERATOR" --trainer.strategy ddp
     --trainer.devices "$DEVICES" --trainer.num_nodes "$NODES" "$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
srun "${CMD[@]}"
