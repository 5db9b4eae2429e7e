#!/usr/bin/env bash
# Prepares this machine for ambient-node: distribution packages (BCC, kernel headers,
# iproute2, ...), bpffs, a merged kernel-header tree for BCC, and the virtual
# environment with the pinned Python dependencies. Idempotent and quick when done.
#
# Usage: deploy/setup.sh            (as root; `make setup`, `make test`, `make demo` call it)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

say() { printf '[setup] %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "ambient-node needs root (BPF programs and network namespaces): run 'sudo make ...' or as root."
[ "$(uname -s)" = Linux ] || die "ambient-node needs Linux (eBPF, network namespaces); this is $(uname -s)."

# --- distribution packages -------------------------------------------------
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
# Packages whose files we use; each line: package name. Keep sorted.
packages=(
  curl
  ethtool
  iperf3
  iproute2
  iptables
  libbpfcc
  "linux-headers-${arch}"
  procps
  python3-bpfcc
  tcpdump
  util-linux
  vagrant
  wrk
)
command -v dpkg-query >/dev/null || die "this setup script needs a Debian or Ubuntu system (dpkg/apt); install BCC, kernel headers and iproute2 by hand elsewhere."
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then packages+=(python3-venv); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing distribution packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed; is a Debian package mirror reachable?"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed (see the output of 'apt-get install ${missing[*]}')."
fi

# --- bpffs -----------------------------------------------------------------
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  say "mounting bpffs on /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs on /sys/fs/bpf: does this kernel have CONFIG_BPF_SYSCALL?"
fi

# --- virtual environment -----------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is $("$PYTHON" --version 2>&1); ambient-node needs Python 3.11 or newer (set PYTHON=...)."
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# The distribution's bcc module is pure Python over libbcc; expose only it to the venv.
bcc_dir=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(os.path.dirname(bcc.__file__)))' 2>/dev/null) \
  || die "the distribution's python3-bpfcc is not importable by /usr/bin/python3; reinstall python3-bpfcc."
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/distbcc"
ln -sfn "$bcc_dir/bcc" "$VENV/distbcc/bcc"
echo "$(cd "$VENV/distbcc" && pwd)" > "$site/ambient-distbcc.pth"

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing Python dependencies (pinned in pyproject.toml)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e '.[dev]' || die "pip install of the project failed (see above)."
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# --- generated code and kernel headers for BCC ---------------------------------
"$VENV/bin/python" -m ambient.buildenv prepare || die "preparing generated code or kernel headers failed (see above)."

# --- what the kernel must offer (BPF, bpffs, bpf_sk_assign's kernel floor, netns) ---
"$VENV/bin/python" -m ambient.preflight root netns kernel bpf bpffs bcc >&2 || exit 2
say "ready"
