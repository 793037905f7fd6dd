#!/usr/bin/env bash
# On a GPU machine, from the repository root, with the competition zip copied to .kaggle/
# (git-ignored): GPU tests, the fast recipe, predict and bench. Logs go to the folder $OUT names;
# keep them under reports/h100/.
set -o pipefail
: "${OUT:?set OUT to the folder for the logs}"
export PYTHONUNBUFFERED=1 DIGITS_KAGGLE_ZIP=$PWD/.kaggle/digit-recognizer.zip
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.log"
pipeline download --zip .kaggle/digit-recognizer.zip && (time pipeline prepare) 2>&1 | tee -a "$OUT/gpu.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3 | tee -a "$OUT/gpu.log"
timeout 120 pipeline train --recipe fast --device cuda --seed 0 --out models/fastnet.pt 2>&1 | tail -3 | tee -a "$OUT/gpu.log"
timeout 60 pipeline predict --checkpoint models/fastnet.pt --device cuda 2>&1 | tee -a "$OUT/gpu.log"
timeout 120 pipeline bench --device cuda --models fastnet --no-ddp --no-best-net 2>&1 | tee -a "$OUT/gpu.log"
