#!/usr/bin/env bash
# Installs the Debian packages a make target needs, and only the missing ones, so that the
# README's two commands are the whole set-up on a fresh Debian machine with Python and make.
#
#   scripts/system-packages.sh venv   what `python -m venv` needs (Debian ships venv apart)
#   scripts/system-packages.sh test   + the real programs the test suite drives
#
# As root it runs apt-get itself; otherwise through `sudo -n` when that works without a
# password; failing both it prints the one command to run and exits 1 (never a silent skip).
set -euo pipefail

profile=${1:-test}
PYTHON=${PYTHON:-python3}

packages=()
# Debian's python3 keeps venv/ensurepip in python3.X-venv.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    packages+=("python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
fi
if [[ $profile == test ]]; then
    # Real programs recorded, imported and talked to by the tests: sudo (sudo I/O logs),
    # asciinema (recordings and `asciinema cat`), tmux + vim-tiny + less + procps (top): the
    # full-screen programs recorded and searched as they stood on screen, rsyslog +
    # rsyslog-gnutls (the syslog-over-TLS SIEM peer), faketime (the suite's date-dependent
    # paths run at injected dates), chromium and firefox-esr (the web console's browser tests:
    # Playwright drives chromium, WebDriver BiDi drives firefox), kubectl (`kubectl kustomize`
    # renders deploy/k8s for its schema checks).
    packages+=(sudo tmux asciinema vim-tiny less procps rsyslog rsyslog-gnutls faketime chromium
        firefox-esr kubectl)
fi
if [[ $profile != venv && $profile != test ]]; then
    echo "system-packages: unknown profile '$profile' (venv or test)" >&2
    exit 2
fi

missing=()
for p in ${packages[@]+"${packages[@]}"}; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-packages: these Debian packages are needed and there is no apt-get here:" \
        "${missing[*]}" >&2
    exit 1
fi
if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "system-packages: run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >/dev/null
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "system-packages: installed ${missing[*]}" >&2
