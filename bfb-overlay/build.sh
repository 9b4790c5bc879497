#!/usr/bin/env bash
# Builds the BFB overlay archive:
#
#   dist/bluefield-coordinator-overlay-<version>.tar.gz             (host platform)
#   dist/bluefield-coordinator-overlay-<version>-<platform>.tar.gz  (--platform)
#
# containing, under bluefield-coordinator-overlay-<version>/:
#   wheels/      the project's wheel, every dependency's wheel and pip's own
#   rootfs/      the tree laid over the image: config, unit + enablement, tmpfiles.d,
#                and the repository's ops/ (Grafana dashboard, Prometheus alerting
#                rules) as usr/share/bluefield-coordinator/ops/
#   install.sh   builds the venv in /opt/bluefield-coordinator offline and lays down rootfs/
#   bf.cfg.fragment, README.md, VERSION, BUILD-INFO, SHA256SUMS
#
# The DPU's Arm cores need aarch64 wheels for the Python of the BFB image
# (Ubuntu 22.04: 3.10, 24.04: 3.12):
#
#   bfb-overlay/build.sh --platform manylinux2014_aarch64 --python-version 3.10
#
# Cross builds take binary wheels only; dependencies published only as a
# source distribution (ovs) are built here as pure-Python wheels, with their
# optional C speedups disabled. Needs network access to the package index
# (the machine's pip configuration applies: mirrors, proxies).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --platform TAG        collect wheels for TAG (e.g. manylinux2014_aarch64); default: this host
  --python-version X.Y  the target's Python (required with --platform)
  --pure-sdist NAME     a dependency without binary wheels to build as pure Python
                        (repeatable; default: ovs)
  --python PATH         interpreter running pip (default: $PYTHON, .venv/bin/python, python3)
  --out DIR             where the archive goes (default: dist/)
EOF
}

die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/dist"
platform=""
target_python=""
pure_sdists=()
python=${PYTHON:-}

while [ $# -gt 0 ]; do
    case $1 in
        --platform) platform=${2:?--platform needs a value}; shift 2 ;;
        --python-version) target_python=${2:?--python-version needs a value}; shift 2 ;;
        --pure-sdist) pure_sdists+=("${2:?--pure-sdist needs a value}"); shift 2 ;;
        --python) python=${2:?--python needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
[ ${#pure_sdists[@]} -gt 0 ] || pure_sdists=(ovs)
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip (python3-pip / python3-venv)"
pip=("$python" -m pip --disable-pip-version-check)
if [ -n "$platform" ]; then
    [[ $target_python =~ ^3\.[0-9]+$ ]] || die "--platform needs --python-version X.Y (the BFB image's Python)"
else
    [ -z "$target_python" ] || die "--python-version only applies with --platform"
    target_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# -- the project's wheel, from a clean copy of the tree ---------------------------------
# (an in-tree build would reuse whatever stale files build/ holds)
mkdir "$work/src" "$work/project"
tar -C "$repo" \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./tests \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache \
    --exclude=./.pytest_cache --exclude=./.hypothesis --exclude=./demo-work \
    -cf - . | tar -C "$work/src" -xf -
"${pip[@]}" wheel --quiet --no-deps --wheel-dir "$work/project" "$work/src"
project_wheel=$(ls "$work/project"/bluefield_coordinator-*.whl)
version=$(basename "$project_wheel" | cut -d- -f2)
name="bluefield-coordinator-overlay-$version"
stage="$work/stage/$name"
wheels="$stage/wheels"
mkdir -p "$wheels"
cp "$project_wheel" "$wheels/"

# -- dependency wheels ---------------------------------------------------------------------

# Prints the requirements (from the METADATA of every wheel in $1) whose
# environment markers hold on the target ($2 = X.Y, $3 = platform tag) and
# that no wheel in $1 satisfies yet. Needed because pip evaluates markers
# (tomli; python_version < "3.11") for the interpreter running it, not for
# --python-version.
missing_for_target() {
    "$python" - "$@" <<'EOF'
import sys
import zipfile
from pathlib import Path

try:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover - pip always vendors packaging
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

wheelhouse, python_version, platform = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
machine = "aarch64" if "aarch64" in platform else "x86_64" if "x86_64" in platform else platform
env = {
    "python_version": python_version,
    "python_full_version": python_version + ".0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": machine,
    "extra": "",
}
have = {canonicalize_name(w.name.split("-")[0]) for w in wheelhouse.glob("*.whl")}
wanted = set()
for wheel in wheelhouse.glob("*.whl"):
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        for line in zf.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or "extra" in str(req.marker):
                continue  # unmarked ones pip resolved already; extras are not installed
            if req.marker.evaluate(env) and canonicalize_name(req.name) not in have:
                wanted.add(f"{req.name}{req.specifier}")
print("\n".join(sorted(wanted)))
EOF
}

# The requirement the project's wheel states for a dependency ("ovs<5,>=3.1").
requirement_of() {
    "$python" - "$project_wheel" "$1" <<'EOF'
import re
import sys
import zipfile

wheel, wanted = sys.argv[1], sys.argv[2].lower().replace("_", "-")
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    for line in zf.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = line.split(":", 1)[1].split(";", 1)[0].replace(" ", "")
            name = re.split(r"[<>=!~\[(]", requirement, maxsplit=1)[0]
            if name.lower().replace("_", "-") == wanted:
                print(requirement)
                break
EOF
}

if [ -z "$platform" ]; then
    platform_label=$("$python" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_"))')
    archive="$out/$name.tar.gz"
    "${pip[@]}" wheel --quiet --wheel-dir "$wheels" --find-links "$wheels" "$project_wheel" pip
else
    platform_label=$platform
    archive="$out/$name-$platform.tar.gz"
    for sdist in "${pure_sdists[@]}"; do
        spec=$(requirement_of "$sdist")
        [ -n "$spec" ] || die "--pure-sdist $sdist: not a requirement of the project"
        mkdir -p "$work/pure"
        # A compiler that always fails: setup.py falls back to pure Python.
        CC=/bin/false CXX=/bin/false "${pip[@]}" wheel --quiet --no-deps --no-binary "$sdist" \
            --wheel-dir "$work/pure" "$spec"
    done
    for built in "$work"/pure/*.whl; do
        [ -e "$built" ] || continue
        [[ $built == *-none-any.whl ]] || die "$(basename "$built") is not pure Python: cannot ship it for $platform"
        cp "$built" "$wheels/"
    done
    requirements=("$project_wheel" pip)
    for _ in 1 2 3 4 5; do
        "${pip[@]}" download --quiet --only-binary=:all: --platform "$platform" \
            --python-version "$target_python" --implementation cp \
            --dest "$wheels" --find-links "$wheels" "${requirements[@]}"
        mapfile -t extra < <(missing_for_target "$wheels" "$target_python" "$platform")
        if [ ${#extra[@]} -eq 0 ] || [ -z "${extra[0]}" ]; then
            break
        fi
        requirements+=("${extra[@]}")
    done
fi

# The wheelhouse alone must satisfy the install, as install.sh will demand
# offline: resolve it here, for the target, without an index.
target_args=()
if [ -n "$platform" ]; then
    target_args=(--only-binary=:all: --platform "$platform" --python-version "$target_python"
        --implementation cp --target "$work/resolve-check")
fi
PIP_CONFIG_FILE=/dev/null "${pip[@]}" install --isolated --quiet --dry-run --ignore-installed \
    --no-index --find-links "$wheels" "${target_args[@]}" "bluefield-coordinator==$version" \
    || die "the collected wheels do not satisfy bluefield-coordinator==$version for $platform_label"

# -- the tree ---------------------------------------------------------------------------------

cp -R "$here/rootfs" "$stage/rootfs"
# In the repository the unit is a link to systemd/ (one source of truth);
# the archive carries the file itself.
unit="$stage/rootfs/etc/systemd/system/bluefield-coordinator.service"
rm -f "$unit"
cp "$repo/systemd/bluefield-coordinator.service" "$unit"
# The dashboard and alerting rules, for the fleet's Grafana and Prometheus
# to pick up from the image.
mkdir -p "$stage/rootfs/usr/share/bluefield-coordinator"
cp -R "$repo/ops" "$stage/rootfs/usr/share/bluefield-coordinator/ops"
# Git keeps no modes (and no empty directories): set them here.
mkdir -p "$stage/rootfs/etc/bluefield-coordinator/tls"
find "$stage/rootfs" -type d -exec chmod 0755 {} +
find "$stage/rootfs" -type f -exec chmod 0644 {} +
chmod 0640 "$stage/rootfs/etc/bluefield-coordinator/config.toml"
chmod 0700 "$stage/rootfs/etc/bluefield-coordinator/tls"
install -m 0755 "$here/install.sh" "$stage/install.sh"
install -m 0644 "$here/bf.cfg.fragment" "$stage/bf.cfg.fragment"
install -m 0644 "$repo/README.md" "$stage/README.md"
echo "$version" >"$stage/VERSION"
{
    printf 'BFC_VERSION=%q\n' "$version"
    printf 'BFC_PLATFORM=%q\n' "$platform_label"
    printf 'BFC_PYTHON_VERSION=%q\n' "$target_python"
} >"$stage/BUILD-INFO"
(cd "$stage" && sha256sum wheels/*.whl >SHA256SUMS)
find "$stage" -maxdepth 1 -type f -exec chmod go-w {} +

# -- the archive ------------------------------------------------------------------------------

mkdir -p "$out"
# Sorted and root-owned whoever builds it; SOURCE_DATE_EPOCH pins the mtimes.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-$(date +%s)}" \
    -C "$work/stage" -cf - "$name" | gzip -9n >"$archive.tmp"
mv "$archive.tmp" "$archive"
echo "$archive"
