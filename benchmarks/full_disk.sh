#!/bin/sh
# A real full disk mid-run (docs/reliability.md): a full fine-tuning run of bert-tiny-mlm into a 100 MB tmpfs.
# Its checkpoint (52 MB) at step 2 and the best model (18 MB) at step 3 fit; the checkpoint at step 4 does not.
# Expect: `zoft: error: could not write .../checkpoint/state.pt: ...`, exit 2, summary.json status "crashed",
# and the checkpoint of step 2 loadable. Needs a mount namespace: run as root, or `unshare -rm` where user
# namespaces are allowed.  Usage: unshare -m sh benchmarks/full_disk.sh   (GLUE_DIR: the GLUE folder)
set -u
disk=$(mktemp -d)
mount -t tmpfs -o size=100m tmpfs "$disk" || exit 1
zoft train --out "$disk/run" --model bert-tiny-mlm --data-dir "${GLUE_DIR:-../shared/glue_data}" --task mrpc \
    --train-limit 64 --validation-fraction 0.02 --steps 6 --eval-every 3 --log-every 1 --batch-size 8 \
    --max-length 64 --method full --checkpoint-every 2 --quiet
echo "exit status $? (2 expected)"
grep '"status"' "$disk/run/summary.json"
python -c "from zoft.runs import RunFolder; print('checkpoint of step', RunFolder('$disk/run').load_checkpoint()[1]['loop']['step'])"
umount "$disk" && rmdir "$disk"
