#!/usr/bin/env bash
# Install extra speech synthesizers for `plcli demo-data` (Debian/Ubuntu, needs root or sudo).
#
# espeak-ng needs nothing from here: it comes with `pip install plcli` (espeakng-loader). Each
# engine installed here adds voices to the speaker pool; `plcli demo-data --engines auto` finds them.
#
#   scripts/install_voices.sh              flite, festival + festvox voices, espeak-ng, sox (Debian main)
#   scripts/install_voices.sh --non-free   also MBROLA voices (us1 us2 us3 en1) and SVOX pico2wave,
#                                          enabling the contrib and non-free components if needed
#   scripts/install_voices.sh --dry-run    print the commands only
#
# Licences: MBROLA voice databases are free for non-commercial, non-military use only. Generate
# data with them if that fits your use; never ship the voices. pico (libttspico) is non-free.
set -euo pipefail

NON_FREE=0
DRY=0
for arg in "$@"; do
  case "$arg" in
    --non-free) NON_FREE=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

run() {
  echo "+ $*"
  if [ "$DRY" = 0 ]; then "$@"; fi
}

if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not found: this script is for Debian and Ubuntu. espeak-ng from pip still works." >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else echo "run as root or install sudo" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive

MAIN_PACKAGES=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox)
NON_FREE_PACKAGES=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils)

if [ "$NON_FREE" = 1 ]; then
  # Debian keeps MBROLA and pico in contrib/non-free; Ubuntu in multiverse
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    if ! grep -Eq '^Components:.*non-free( |$)' /etc/apt/sources.list.d/debian.sources; then
      run $SUDO sed -i -E 's/^Components: main$/Components: main contrib non-free/' /etc/apt/sources.list.d/debian.sources
    fi
  elif [ -f /etc/apt/sources.list ] && grep -q '^deb .*debian' /etc/apt/sources.list; then
    if ! grep -Eq '^deb .*debian.* non-free' /etc/apt/sources.list; then
      run $SUDO sed -i -E '/^deb .*debian/ s/ main$/ main contrib non-free/' /etc/apt/sources.list
    fi
  elif command -v add-apt-repository >/dev/null 2>&1; then
    run $SUDO add-apt-repository -y multiverse
  fi
fi

run $SUDO apt-get update
run $SUDO apt-get install -y --no-install-recommends "${MAIN_PACKAGES[@]}"

if [ "$NON_FREE" = 1 ]; then
  # one at a time: the set of MBROLA voices differs between releases; a missing one is no reason to stop
  for pkg in "${NON_FREE_PACKAGES[@]}"; do
    if [ "$DRY" = 1 ] || apt-cache show "$pkg" >/dev/null 2>&1; then
      run $SUDO apt-get install -y --no-install-recommends "$pkg" || echo "warning: could not install $pkg" >&2
    else
      echo "warning: no package $pkg in the configured archives; skipped" >&2
    fi
  done
  echo "MBROLA voices are for non-commercial use only: generate with them, never ship them."
fi

if [ "$DRY" = 0 ]; then
  PY="${PYTHON:-python3}"
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
  "$PY" - <<'EOF' || true
from plcli.demo.synth import ENGINES, ENGINE_CLASSES, engine_voices
found = [n for n in ENGINES if ENGINE_CLASSES[n].available()]
print("engines now available to plcli demo-data:", ", ".join(found))
print("voices:", len(engine_voices(found)))
EOF
fi
