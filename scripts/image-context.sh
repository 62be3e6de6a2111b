#!/usr/bin/env bash
# The build context of deploy/Dockerfile, made on the host so the build needs no network:
#
#   scripts/image-context.sh DIR [PYTHON]
#
# DIR/wheels: kegpackd (from the checkout's files as a clone has them) and its dependencies
# as wheels for PYTHON (default python3; its version is the one BASE_IMAGE must have), plus
# pip's own wheel; DIR/tini: Debian's static tini (scripts/testenv.sh install puts it there).
# Fetching the dependencies' wheels is the one step that uses the package index.
set -euo pipefail

(($# >= 1)) || { sed -n '3,3s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
dest=$1
python=${2:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tini=/usr/bin/tini-static
[[ -x $tini ]] || { echo "image-context: $tini not found: apt-get install tini" >&2; exit 1; }

# A copy of the tracked (and new, not ignored) files: pip's in-tree build must neither see
# what lies around in the checkout nor leave a build/ directory in it.
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
cd "$repo"
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' name; do
        if [[ -f $name ]]; then cp --parents -- "$name" "$source/"; fi
    done
cd - >/dev/null
mkdir -p "$dest/wheels"
rm -f "$dest"/wheels/*.whl
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dest/wheels" \
    "$source" pip
install -m 0755 "$tini" "$dest/tini"
