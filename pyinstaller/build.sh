#!/usr/bin/env bash
# Build dist/zriver: one self-contained executable for every role (host, runner, up, client).
#
# Run from the repository root in an environment where the project is installed with its
# build extra (`python3 -m pip install -e '.[build]'`); Linux needs binutils (objdump).
# PYTHON picks the interpreter (default: python3). Work files go under build/pyinstaller.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
WORK="build/pyinstaller"

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
    --onefile \
    --name zriver \
    --noconfirm \
    --clean \
    --log-level WARN \
    --distpath dist \
    --workpath "$WORK" \
    --specpath "$WORK" \
    "${exclude_args[@]}" \
    --collect-submodules zriver \
    --add-data "$PWD/zriver/web/static:zriver/web/static" \
    --hidden-import uvloop \
    --hidden-import zmq.backend.cython \
    "$PWD/pyinstaller/zriver_entry.py"

echo "built $PWD/dist/zriver"
