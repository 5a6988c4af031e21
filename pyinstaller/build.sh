#!/usr/bin/env bash
# Build dist/zriver: one self-contained executable for every role (host, runner, up, client).
#
# Run from the repository root in an environment where the project is installed with its
# build extra (`python3 -m pip install -e '.[build]'`); Linux needs binutils (objdump).
# PYTHON picks the interpreter (default: python3). Work files go under build/pyinstaller.
#
# The file is pyinstaller/stub.sh (POSIX sh) followed by a gzip'd tar of PyInstaller's
# one-folder build: its first start unpacks it once into a per-version cache directory and
# every later start execs from there (see docs/binary.md). A PyInstaller --onefile build would
# unpack its whole archive again on every start (0.3-1 s before any of zriver runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
WORK="build/pyinstaller"
ONEDIR="$WORK/dist"

# Never needed at run time, yet pulled in through optional imports of packages that happen to be
# installed beside the project (test tools, notebooks): excluding them keeps the binary small
# and its start-up fast. setuptools/pkg_resources: slow to import, unused.
EXCLUDES=(
    setuptools pkg_resources
    tkinter _tkinter IPython jedi parso matplotlib matplotlib_inline numpy
    pytest _pytest py hypothesis trio pydantic pydantic_core dotenv
)
exclude_args=()
for module in "${EXCLUDES[@]}"; do
    exclude_args+=(--exclude-module "$module")
done

"$PYTHON" -m PyInstaller \
    --onedir \
    --name zriver \
    --noconfirm \
    --clean \
    --log-level WARN \
    --distpath "$ONEDIR" \
    --workpath "$WORK" \
    --specpath "$WORK" \
    "${exclude_args[@]}" \
    --collect-submodules zriver \
    --add-data "$PWD/zriver/web/static:zriver/web/static" \
    --hidden-import uvloop \
    --hidden-import zmq.backend.cython \
    "$PWD/pyinstaller/zriver_entry.py"

# The archive: the one-folder build under a top directory named zriver (sorted, no owners).
archive="$WORK/zriver.tar.gz"
tar -C "$ONEDIR" --sort=name --owner=0 --group=0 --numeric-owner -cf - zriver | gzip -6 -n >"$archive"
mkdir -p dist
rm -rf dist/zriver  # a one-folder build left by older scripts
"$PYTHON" pyinstaller/assemble.py pyinstaller/stub.sh "$archive" dist/zriver
echo "built $PWD/dist/zriver"
