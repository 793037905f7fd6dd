set -o pipefail; export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
pipeline download --source zip --zip .kaggle/digit-recognizer.zip > /dev/null && pipeline prepare > /dev/null
timeout 500 python3 reports/h100/elastic-exp.py "$@" 2>&1 | grep -E "^(CV|CFG|TOTAL|Traceback|\w+Error)" | tee $OUT/exp.log
