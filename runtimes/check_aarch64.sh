#!/usr/bin/env bash
# Run a bundle's run.py on the Raspberry Pi's architecture (aarch64) under emulation, and
# check that it generates the same tokens as on this machine.
#
#   sudo runtimes/check_aarch64.sh BUNDLE [--runtime onnxruntime]
#
# How: Debian's qemu-user-static runs arm64 binaries through binfmt_misc; debootstrap makes
# a minimal Debian bookworm arm64 root (with its own Python 3.11, as Raspberry Pi OS
# bookworm has); pip on this machine downloads the runtime's aarch64 wheels (the same
# runtimes/requirements-<runtime>.txt a device installs), which are installed into a venv
# inside that root with no network; the bundle is copied in and run in a chroot. The host
# runs the same greedy generation with its own Python, and the token ids must match.
#
# Timings under emulation mean nothing (every instruction is translated); correctness does.
# Needs root (debootstrap, chroot, binfmt_misc), Debian's apt, and network access to
# deb.debian.org and PyPI the first time; the root is kept in $QTF_EDGE_ARM64_ROOT (default
# ~/.cache/qtf-edge/arm64-root) and reused.
set -euo pipefail

usage() { echo "usage: $0 BUNDLE [--runtime onnxruntime|ai-edge-litert|tflite-runtime]" >&2; exit 2; }
[ $# -ge 1 ] || usage
bundle=$(realpath "$1"); shift
runtime=onnxruntime
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    *) usage ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/requirements-$runtime.txt"
[ -f "$bundle/manifest.json" ] || { echo "check_aarch64: $bundle: no manifest.json; expected a bundle folder" >&2; exit 2; }
[ -f "$requirements" ] || { echo "check_aarch64: no $requirements; expected a runtime with a requirements file" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "check_aarch64: needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 2; }
root=${QTF_EDGE_ARM64_ROOT:-$HOME/.cache/qtf-edge/arm64-root}
prompt="The castle was"
tokens=24

step() { echo "== $*"; }
# Commands in the root see none of this machine's environment (pip settings, PYTHONPATH).
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$root" "$@"; }

step "emulator"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get install -y -q qemu-user-static binfmt-support debootstrap >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
qemu-aarch64-static --version | head -1

step "arm64 root: $root"
if [ ! -x "$root/usr/bin/python3" ]; then
  rm -rf "$root.tmp"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv bookworm \
    "$root.tmp" http://deb.debian.org/debian >/dev/null
  mv "$root.tmp" "$root"
fi
in_root uname -m
in_root python3 --version

step "aarch64 wheels for $runtime (pip download on this machine)"
work=$(mktemp -d "$root/tmp/check.XXXXXX")
inside=${work#"$root"}
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --only-binary=:all: --implementation cp --python-version 3.11 \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux2014_aarch64 -d "$work/wheels" -r "$requirements" 2> "$work/pip.err" \
  || { cat "$work/pip.err" >&2; exit 1; }
ls "$work/wheels" | grep -iE '^(numpy|onnxruntime|ai_edge_litert|tflite_runtime|tokenizers)-' 

step "device venv inside the root (no network: the wheels above only)"
cp "$requirements" "$work/requirements.txt"
in_root python3 -m venv "$inside/venv"
in_root "$inside/venv/bin/python" -m pip install --quiet --no-index \
  --find-links "$inside/wheels" -r "$inside/requirements.txt"
in_root "$inside/venv/bin/python" -m pip list --format=freeze | grep -iE '^(numpy|onnxruntime|ai-edge-litert|tflite-runtime|tokenizers)=='
in_root "$inside/venv/bin/python" -c "import torch" 2>/dev/null \
  && { echo "check_aarch64: torch is importable in the device venv" >&2; exit 1; }
echo "torch: not importable (as on the device)"

# Greedy, then sampled (temperature 0.8, top-k 40, seed 0): a sampled token depends on the
# whole distribution, not only its argmax, so agreement there is the stronger check.
settings=(--prompt "$prompt" --max-new-tokens "$tokens" --runtime "$runtime" --json --quiet)
step "run.py on aarch64 (emulated): greedy and sampled, $tokens tokens each"
# No /proc or /sys in the root: with the host's /sys bind-mounted, onnxruntime's cpuinfo
# reads this x86 machine's CPU topology and crashes under qemu; without it, it warns
# (shown below) and runs with generic aarch64 kernels.
cp -r "$bundle" "$work/bundle"
for mode in "--temperature 0" "--temperature 0.8 --top-k 40 --seed 0"; do
  # shellcheck disable=SC2086
  in_root "$inside/venv/bin/python" "$inside/bundle/run.py" "$inside/bundle" "${settings[@]}" \
    $mode >> "$work/arm64.json" 2> "$work/arm64.err" || { cat "$work/arm64.err" >&2; exit 1; }
done
sed 's/^/  stderr: /' "$work/arm64.err" | sort -u
cat "$work/arm64.json"

step "run.py on this machine ($(uname -m)), same settings"
host_python=${QTF_EDGE_HOST_PYTHON:-python3}
for mode in "--temperature 0" "--temperature 0.8 --top-k 40 --seed 0"; do
  # shellcheck disable=SC2086
  "$host_python" "$bundle/run.py" "$bundle" "${settings[@]}" $mode >> "$work/host.json"
done
cat "$work/host.json"

step "verdict"
python3 - "$work/arm64.json" "$work/host.json" <<'EOF'
import json, sys
arm, host = ([json.loads(line) for line in open(p)] for p in sys.argv[1:])
ok = len(arm) == len(host) == 2
for name, a, h in zip(("greedy", "sampled"), arm, host):
    same = a["tokens"] == h["tokens"]
    ok &= same
    print(f"{name}: aarch64 tokens {'==' if same else '!='} host tokens "
          f"({a['new_tokens']} new tokens after a {a['prompt_tokens']}-token prompt)")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
