#!/bin/sh
# pipesim's container entrypoint. Started without --user (as root), it runs pipesim as the owner of the working
# folder, the mount of `docker run -v "$PWD:/work" -w /work pipesim ...`, so every output is the caller's; the
# image's own /work belongs to the non-root user pipesim. Started with --user, pipesim runs as that user. Each
# step execs, so pipesim is PID 1 and `docker stop`'s SIGTERM reaches it.
set -eu
if [ "$(id -u)" = 0 ]; then
    owner=$(stat -c '%u:%g' .)
    if [ "$owner" != "0:0" ]; then
        exec setpriv --reuid="${owner%:*}" --regid="${owner#*:}" --clear-groups -- pipesim "$@"
    fi
fi
exec pipesim "$@"
