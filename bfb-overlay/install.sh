#!/usr/bin/env bash
# Installs bluefield-coordinator from this unpacked overlay, offline:
#   - a virtualenv under /opt/bluefield-coordinator built from wheels/ only
#     (no index, no network, no pip configuration of the machine),
#   - the files of rootfs/ (config, systemd unit and its enablement,
#     tmpfiles.d rule) laid over the root file system.
#
# Run it as root inside the target system: on a live DPU directly, or from
# the BFB installer chrooted into the new image (bf.cfg.fragment does that),
# so the venv is built with the target's own python3.
#
# Environment:
#   BFC_ROOT    install below this directory instead of / (tests, staging).
#               The venv's scripts then name BFC_ROOT/opt/... in their
#               shebangs: such a tree is for inspection, not for booting.
#   PYTHON      interpreter to build the venv with (default: python3)
#   BFC_LISTEN  HOST:PORT replacing the listener placeholder of a freshly
#               installed config.toml (the out-of-band management address)
#   BFC_NO_RESTART=1  on a live system, do not restart a running daemon
#
# Re-running is safe: a new venv is built next to the old one and switched
# to atomically; an existing, locally edited config.toml is kept and the
# shipped one is written beside it as config.toml.dist.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${BFC_ROOT:-/}
root=${root%/}                      # "" for the real root
python=${PYTHON:-python3}
prefix=/opt/bluefield-coordinator   # the unit's ExecStart= names this path
placeholder_listen="198.51.100.2:8443" # in rootfs/etc/bluefield-coordinator/config.toml

say() { printf 'bluefield-coordinator install: %s\n' "$*"; }
die() { printf 'bluefield-coordinator install: error: %s\n' "$*" >&2; exit 1; }

if ! { [ -f "$here/VERSION" ] && [ -d "$here/wheels" ] && [ -d "$here/rootfs" ]; }; then
    die "$here is not an unpacked overlay (VERSION, wheels/, rootfs/ expected)"
fi
version=$(cat "$here/VERSION")
# Build info: the platform and Python the wheels were collected for.
# shellcheck source=/dev/null
. "$here/BUILD-INFO"

# -- checks before touching anything ------------------------------------------------

command -v "$python" >/dev/null || die "no $python: the target needs Python >= 3.10"
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$python is $python_version; bluefield-coordinator needs >= 3.10"
if [ "$python_version" != "$BFC_PYTHON_VERSION" ]; then
    die "the wheels were collected for Python $BFC_PYTHON_VERSION ($BFC_PLATFORM) but $python is $python_version: rebuild with build.sh --python-version $python_version"
fi
(cd "$here" && sha256sum --quiet --check SHA256SUMS) || die "wheel checksums do not match SHA256SUMS"
if [ -n "${BFC_LISTEN:-}" ] && ! [[ $BFC_LISTEN =~ ^[][0-9A-Za-z.:-]+:[0-9]+$ ]]; then
    die "BFC_LISTEN must be HOST:PORT, got '$BFC_LISTEN'"
fi
owner=()
if [ "$(id -u)" -eq 0 ]; then owner=(-o 0 -g 0); fi

# -- the virtualenv ------------------------------------------------------------------

dest="$root$prefix"
build_id=$(sha256sum "$here/SHA256SUMS" | cut -c1-12)
venv_name="venv-$version-$build_id"
venv="$dest/$venv_name"
mkdir -p "$dest"
chmod 0755 "$dest"
previous=$(readlink "$dest/bin" 2>/dev/null || true)

if [ -f "$venv/.complete" ]; then
    say "$venv_name already installed"
else
    rm -rf "$venv"
    say "building $venv with $python $python_version"
    # --without-pip: Debian/Ubuntu ship venv without ensurepip unless
    # python3-venv is installed; pip runs from its bundled wheel instead.
    "$python" -m venv --without-pip "$venv"
    pip_wheel=$(ls "$here"/wheels/pip-*.whl)
    # --isolated and PIP_CONFIG_FILE=/dev/null: no index, proxy, constraint
    # or find-links setting of this machine may leak into the install.
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$pip_wheel/pip" install \
        --isolated --no-index --find-links "$here/wheels" --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location --quiet \
        "bluefield-coordinator==$version"
    "$venv/bin/bluefield-coordinator" --version >/dev/null || die "the installed daemon does not run"
    touch "$venv/.complete"
fi
# Switch atomically: a rename over the old link, never a moment without one.
ln -sfn "$venv_name/bin" "$dest/.bin.new"
mv -T "$dest/.bin.new" "$dest/bin"
install "${owner[@]}" -m 0644 "$here/README.md" "$dest/README.md"
# Keep the new venv and the one it replaced (for a quick rollback: point
# bin back at it); older ones go.
for old in "$dest"/venv-*; do
    [ -d "$old" ] || continue
    name=$(basename "$old")
    if [ "$name" != "$venv_name" ] && [ "$name/bin" != "$previous" ]; then
        rm -rf "$old"
    fi
done

# -- the file tree -----------------------------------------------------------------------

# File by file rather than `tar -x` or `cp -a` onto /: those would replace a
# merged-/usr symlink (/lib -> usr/lib) or the mode of /etc by a directory
# entry of the archive.
config_dir="etc/bluefield-coordinator"
fresh_config=""
while IFS= read -r -d '' path; do
    rel=${path#"$here/rootfs/"}
    target="$root/$rel"
    mode=$(stat -c %a "$path")
    if [ -L "$path" ]; then
        [ -d "$target" ] && [ ! -L "$target" ] && die "$target is a directory, expected a symlink"
        ln -sfn "$(readlink "$path")" "$target"
    elif [ -d "$path" ]; then
        if [ ! -d "$target" ]; then
            install -d "${owner[@]}" -m "$mode" "$target"
        elif [[ $rel == "$config_dir" || $rel == "$config_dir"/* ]]; then
            chmod "$mode" "$target"   # ours: the tls/ mode matters
        fi
    elif [[ $rel == "$config_dir"/* ]] && [ -e "$target" ] && ! cmp -s "$path" "$target"; then
        install "${owner[@]}" -m "$mode" "$path" "$target.dist"
        say "kept the existing /$rel; the shipped one is /$rel.dist"
    else
        [[ $rel == "$config_dir"/config.toml ]] && fresh_config="$target"
        install "${owner[@]}" -m "$mode" "$path" "$target"
    fi
done < <(find "$here/rootfs" -mindepth 1 -print0 | sort -z)

if [ -n "${BFC_LISTEN:-}" ]; then
    if [ -n "$fresh_config" ]; then
        sed -i "s/\"$placeholder_listen\"/\"$BFC_LISTEN\"/" "$fresh_config"
        say "listener set to $BFC_LISTEN"
    else
        say "BFC_LISTEN ignored: the existing config.toml was kept"
    fi
fi
"$dest/bin/bluefield-coordinator" check --config "$root/$config_dir/config.toml" >/dev/null \
    || die "/$config_dir/config.toml does not pass 'bluefield-coordinator check'"

# -- a live system ------------------------------------------------------------------------

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create /etc/tmpfiles.d/bluefield-coordinator.conf
    systemctl daemon-reload
    if [ "${BFC_NO_RESTART:-0}" != 1 ]; then
        systemctl try-restart bluefield-coordinator.service
    fi
fi
say "installed $version ($BFC_PLATFORM, Python $BFC_PYTHON_VERSION) in $dest"
