#!/usr/bin/env bash
# Install detectron2 into the given Python environment, only when `import detectron2` fails there.
#
# There is no PyPI project named "detectron2". The route below is the one recorded in
# ../shared/notes/detectron2.md: the `sal-detectron2==0.7.2` wheel holds upstream detectron2's Python
# code (2024-08) plus a CUDA-12 `_C` extension built for CPython 3.10 only. Its file is tagged
# cp310, so pip is asked for the 3.10 file, which is renamed to a pure-Python tag and installed with
# --no-deps (its metadata pins numpy<2, which is not needed). The foreign `_C*.so` is deleted:
# Mask R-CNN does not need it (torchvision provides ROIAlign and NMS).
set -euo pipefail
PY=${1:?usage: install_detectron2.sh PYTHON}
if "$PY" -c "import detectron2" 2>/dev/null; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" sal-detectron2==0.7.2
mv "$tmp"/sal_detectron2-0.7.2-*.whl "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
"$PY" -m pip install -q --no-deps "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$site"/detectron2/_C*.so
"$PY" -c "import detectron2, detectron2.modeling" && echo "detectron2 installed from sal-detectron2==0.7.2 (without _C)"
