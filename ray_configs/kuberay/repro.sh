#!/usr/bin/env bash
# The RayJob's entrypoint (rayjob.yaml), on the head pod: bring the project checkout on the shared volume
# to the image's code, then run the pipeline in it. Workers import the same code from the image
# (/opt/lifelong, installed editable), so driver and workers agree. Extra arguments go to `lifelong repro`.
set -euo pipefail
src=/opt/lifelong
dst=/mnt/lifelong/lifelong
mkdir -p "$dst"
# Overlay, not mirror: the pipeline's state there (data/, runs/, dvc.lock, results/) is not in the image
# and stays; a file deleted from the project since an earlier image stays too (harmless; remove the
# checkout to start clean). The venv stays in the image.
tar -C "$src" --exclude=./.venv --exclude=./lifelong.egg-info -cf - . | tar -C "$dst" -xf -
cd "$dst"
exec /opt/lifelong/.venv/bin/lifelong repro "$@"
