#!/bin/sh
# ringshim-install [DIR]: the init-container step. Copies libringshim.so and the
# ringshim CLI into DIR (default /ringshim; a volume the application container mounts
# at /usr/lib/ringshim), then runs `ringshim doctor` so the pod's log says what works
# under the pod's seccomp profile and whether its RINGSHIM_* values are valid.
#
#   RINGSHIM_LIBRARY          library to copy (default /usr/lib/ringshim/libringshim.so)
#   RINGSHIM_INSTALL_DOCTOR   0 = skip the doctor report (default 1)
#
# Exit status: 0 done; 1 a copy failed; 2 the RINGSHIM_* configuration is invalid
# (doctor's verdict; the init container then fails, so the application does not start
# with a configuration the library would ignore, as `ringshim run` refuses it).
set -eu

dest="${1:-/ringshim}"
lib="${RINGSHIM_LIBRARY:-/usr/lib/ringshim/libringshim.so}"
cli="$(command -v ringshim || true)"
[ -n "$cli" ] || { echo "ringshim-install: ringshim CLI not found in PATH" >&2; exit 1; }

mkdir -p "$dest"
# Copy under a temporary name and rename: a restarted init container never leaves a
# half-written library where LD_PRELOAD points.
install_one() { # SRC NAME
    cp "$1" "$dest/.$2.$$"
    chmod 0755 "$dest/.$2.$$"
    mv -f "$dest/.$2.$$" "$dest/$2"
}
install_one "$lib" libringshim.so
install_one "$cli" ringshim
echo "ringshim-install: installed $dest/libringshim.so and $dest/ringshim"

if [ "${RINGSHIM_INSTALL_DOCTOR:-1}" != 0 ]; then
    exec "$dest/ringshim" doctor
fi
