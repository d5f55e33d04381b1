#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system libraries, a venv, torch (local CPU wheel) FIRST,
# then ptq3d with torch held by constraints.txt so nothing drags in a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PTQ3D_VENV:-.venv}"
EXTRAS="${PTQ3D_EXTRAS:-dev,distributed}"

need_apt=()
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then need_apt+=(libusb-1.0-0); fi
if [[ "${PTQ3D_BROWSER:-1}" == "1" ]] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
# pdflatex + booktabs/geometry: the report tests compile every generated .tex (144 MiB installed; PTQ3D_LATEX=0 skips)
if [[ "${PTQ3D_LATEX:-1}" == "1" ]] && ! command -v pdflatex >/dev/null 2>&1; then need_apt+=(texlive-latex-base texlive-latex-recommended); fi
if (( ${#need_apt[@]} )); then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == "0" ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "install.sh: please install system packages: ${need_apt[*]}" >&2
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"; fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null
if ! "$PY" -c 'import torch,sys; sys.exit(0 if torch.__version__=="2.13.0+cpu" or torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -c constraints.txt -e ".[${EXTRAS}]"
"$PY" -c 'import torch; print("ptq3d install ok: torch", torch.__version__)'
