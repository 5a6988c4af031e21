#!/bin/sh
# zriver: one self-contained executable (a POSIX sh stub followed by a gzip'd tar of the
# PyInstaller one-folder build). The first start unpacks it once into a per-version cache
# directory; every later start execs the cached build directly (no unpacking).
#
# Cache: $ZRIVER_CACHE_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/zriver; when that cannot be
# written or does not allow executing programs, ${TMPDIR:-/tmp}/zriver-<uid> (mode 700, owned
# by the user). Each version lives in <cache>/<sha256 of the archive>, published atomically
# (a symlink to a fully unpacked, checked directory), so concurrent first starts are safe: each
# unpacks into its own directory, the first to publish wins and the others remove theirs.
# Removing the cache directory is always safe while no zriver runs; the next start unpacks again.
# A version that publishes itself removes the other versions no process runs from (an upgrade
# leaves no ~100 MB copy behind; one still running, e.g. an old task keeper, is kept).
# Needs: sh, tail, tar, gzip (and sha256sum to check the archive, when present).
ZRIVER_SHA256=@SHA256@
ZRIVER_OFFSET=@OFFSET@
ZRIVER_MARK=.zriver-sha256

zriver_self=$0
case $zriver_self in
    /*) ;;
    *) zriver_self=$PWD/$zriver_self ;;
esac
# The file the user ran (zriver.bundle.binary_path: what `zriver init service` writes).
_ZRIVER_BINARY=$zriver_self
export _ZRIVER_BINARY

# $1: a cache base, then zriver's arguments; exec the cached build from that base (unpacking
# it first when needed), or return 1 when it cannot be used.
zriver_run_from() {
    zriver_base=$1
    shift
    zriver_dir="$zriver_base/$ZRIVER_SHA256"
    if [ -r "$zriver_dir/$ZRIVER_MARK" ] && read -r zriver_got <"$zriver_dir/$ZRIVER_MARK" \
        && [ "$zriver_got" = "$ZRIVER_SHA256" ] && "$zriver_dir/probe" 2>/dev/null; then
        exec "$zriver_dir/zriver/zriver" "$@"
    fi
    zriver_unpack "$zriver_base"
    zriver_unpacked=$?
    trap - INT TERM HUP
    [ "$zriver_unpacked" = 0 ] || return 1
    exec "$zriver_dir/zriver/zriver" "$@"
}

# $1: a cache base; unpack and publish this version there (0), or say nothing and return 1.
zriver_unpack() {
    mkdir -p -m 700 "$1" 2>/dev/null && [ -d "$1" ] && [ -O "$1" ] && [ -w "$1" ] || return 1
    zriver_tmp="$1/.$ZRIVER_SHA256.$$"
    rm -rf "$zriver_tmp"
    # Interrupted: leave nothing behind (set before the directory exists: a signal between
    # the two would leave it).
    trap 'rm -rf "$zriver_tmp"; exit 130' INT TERM HUP
    mkdir -m 700 "$zriver_tmp" 2>/dev/null || return 1
    if command -v sha256sum >/dev/null 2>&1; then
        zriver_sum=$(tail -c +"$ZRIVER_OFFSET" "$zriver_self" | sha256sum) || zriver_sum=
        if [ "${zriver_sum%% *}" != "$ZRIVER_SHA256" ]; then
            rm -rf "$zriver_tmp"
            echo "zriver: $zriver_self is damaged (its archive does not match its sha256): download it again" >&2
            exit 1
        fi
    fi
    # The probe: a program in the new directory, run once now and before each later exec, says
    # whether this file system lets us execute (noexec mounts do not).
    if ! tail -c +"$ZRIVER_OFFSET" "$zriver_self" | tar -xzf - -C "$zriver_tmp" 2>/dev/null \
        || ! printf '#!/bin/sh\nexit 0\n' >"$zriver_tmp/probe" \
        || ! chmod 755 "$zriver_tmp/probe" || ! "$zriver_tmp/probe" 2>/dev/null \
        || ! printf '%s\n' "$ZRIVER_SHA256" >"$zriver_tmp/$ZRIVER_MARK"; then
        rm -rf "$zriver_tmp"
        return 1
    fi
    # Publish: symlink(2) is atomic and fails when the name exists (-n: never follow it). A
    # link left dangling (its directory removed by hand) is replaced.
    if [ -L "$1/$ZRIVER_SHA256" ] && [ ! -e "$1/$ZRIVER_SHA256" ]; then
        rm -f "$1/$ZRIVER_SHA256"
    fi
    if ln -sn ".$ZRIVER_SHA256.$$" "$1/$ZRIVER_SHA256" 2>/dev/null; then
        # Copies of this version left by starts that died while unpacking (their pid is gone);
        # one whose start still runs is unpacking now, and removes itself when it loses.
        for zriver_old in "$1/.$ZRIVER_SHA256".*; do
            [ -d "$zriver_old" ] && [ "$zriver_old" != "$zriver_tmp" ] || continue
            kill -0 "${zriver_old##*.}" 2>/dev/null || rm -rf "$zriver_old"
        done
        zriver_prune_others "$1"
        return 0
    fi
    rm -rf "$zriver_tmp"  # another start published first: use its directory
    [ -r "$1/$ZRIVER_SHA256/$ZRIVER_MARK" ]
}

# $1: a cache base where this version was just published; remove every other published
# version no process of this machine runs from (its program is no process's executable).
zriver_prune_others() {
    zriver_real=$(cd "$1" 2>/dev/null && pwd -P) || return 0
    zriver_running=$(for zriver_exe in /proc/[0-9]*/exe; do
        readlink "$zriver_exe" 2>/dev/null; done)
    for zriver_link in "$1"/*; do
        [ -L "$zriver_link" ] && [ "${zriver_link##*/}" != "$ZRIVER_SHA256" ] || continue
        zriver_target=$(readlink "$zriver_link") || continue
        case $zriver_target in
            */* | [!.]*) continue ;;  # not a link this stub made (a .<sha256>.<pid> sibling)
        esac
        case $zriver_running in
            *"$zriver_real/$zriver_target/"*) continue ;;  # a process runs from it
        esac
        rm -f "$zriver_link" && rm -rf "${zriver_real:?}/$zriver_target"
    done
}

zriver_cache=${ZRIVER_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/zriver}
zriver_run_from "$zriver_cache" "$@"
zriver_run_from "${TMPDIR:-/tmp}/zriver-$(id -u)" "$@"
echo "zriver: cannot unpack itself: neither $zriver_cache nor ${TMPDIR:-/tmp}/zriver-$(id -u) is a directory of this user that allows running programs; set ZRIVER_CACHE_DIR to one that is" >&2
exit 1
