#!/usr/bin/env bash
# A throw-away Ceph cluster -- one monitor, one in-memory (memstore) OSD and a
# radosgw -- serving S3 on 127.0.0.1, for integration tests that need a real
# S3 server that checks request signatures (no MinIO on this machine).
#
# Usage:
#   ceph_rgw.sh start       DATA_DIR PORT    new empty cluster and S3 user, then
#                                            print `export AWS_...=...` lines
#   ceph_rgw.sh stop        DATA_DIR         stop every daemon started for DATA_DIR
#   ceph_rgw.sh stop-rgw    DATA_DIR         stop radosgw only: an S3 outage,
#                                            buckets and objects are kept
#   ceph_rgw.sh start-rgw   DATA_DIR [PORT]  bring radosgw back (same port by default)
#   ceph_rgw.sh restart-rgw DATA_DIR [PORT]  stop-rgw + start-rgw
#   ceph_rgw.sh env         DATA_DIR         print the export lines again
#   ceph_rgw.sh status      DATA_DIR         which daemons run; exit 1 if none
#
# Everything (config, monitor and OSD data, logs, pid files, admin sockets)
# lives in DATA_DIR, which must be empty, absent, or a previous DATA_DIR of
# this script (`start` wipes it: every cluster starts empty).
#
# Environment:
#   CEPH_DIR             Ceph unpacked by install_ceph.sh (same default as there);
#                        `start` runs install_ceph.sh if it is missing
#   CEPH_RGW_ACCESS_KEY  S3 access key (default tuneraccess)
#   CEPH_RGW_SECRET_KEY  S3 secret key (default tunersecret1234567890)
#   CEPH_RGW_TIMEOUT     seconds `start`/`start-rgw` may take (default 60)
#   CEPH_MON_PORT        monitor port (default: a free port in 20000-29999)
#   CEPH_MEMSTORE_BYTES  OSD capacity, held in RAM as it fills (default 2 GiB)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CEPH_DIR=$(realpath -m "${CEPH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tuner-ceph}")
ROOT=$CEPH_DIR/root
BIN=$ROOT/usr/bin
LIB=$ROOT/usr/lib/x86_64-linux-gnu
ACCESS_KEY=${CEPH_RGW_ACCESS_KEY:-tuneraccess}
SECRET_KEY=${CEPH_RGW_SECRET_KEY:-tunersecret1234567890}
TIMEOUT=${CEPH_RGW_TIMEOUT:-60}
MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-$((2 * 1024 * 1024 * 1024))}

# The binaries come from a private tree, not /usr: point the loader at it.
export LD_LIBRARY_PATH=$LIB:$LIB/ceph:$ROOT/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# Our daemons: short name -> Ceph entity name. Stop order is rgw, osd, mon:
# an OSD whose monitor is gone waits seconds for it before exiting.
declare -A ENTITY=([mon]=mon.a [osd]=osd.0 [rgw]=client.rgw)

log() { echo "ceph_rgw: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    sed -n '/^# Usage:/,/^# Everything/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# --- helpers over DATA_DIR ---------------------------------------------------

set_data_dir() {
    [[ -n ${1:-} ]] || usage
    if [[ $2 == create ]]; then
        mkdir -p "$1"
    elif [[ ! -d $1 ]]; then
        # Nothing was ever started there: stopping is done, the rest fails.
        [[ $2 == stop ]] && exit 0
        die "no such DATA_DIR: $1"
    fi
    DATA=$(cd "$1" && pwd)
    CONF=$DATA/ceph.conf
}

pidfile() { echo "$DATA/run/$1.pid"; }

# True when the PID recorded for daemon $1 is still that daemon of this
# DATA_DIR: a Ceph binary of ours, run with our config file. A recycled PID,
# or a zombie (empty command line), does not count.
alive() {
    local f pid cmdline
    f=$(pidfile "$1")
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmdline == "$BIN/"* && $cmdline == *" -c $CONF "* ]]
}

# Run daemon $1 in the foreground of its own session (so a Ctrl-C or signal to
# the caller's process group does not reach it), detached from the caller's
# stdin/stdout/stderr (so `$(ceph_rgw.sh start ...)` returns), and record its
# PID. setsid execs without forking here (a background job is no group
# leader), so $! is the daemon itself; `alive` below makes sure.
launch() {
    local name=$1 exe=$2
    shift 2
    setsid "$BIN/$exe" -c "$CONF" "$@" -f </dev/null >>"$DATA/log/$name.out" 2>&1 &
    echo $! >"$(pidfile "$name")"
    STARTED+=("$name")
    local i
    for ((i = 0; i < 30; i++)); do
        alive "$name" && return 0
        sleep 0.1
    done
    die "$exe exited at once; see $DATA/log/$name.out"
}

stop_daemon() {
    local name=$1 f pid i
    f=$(pidfile "$name")
    if alive "$name"; then
        pid=$(<"$f")
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$name" || break
            sleep 0.1
        done
        if alive "$name"; then
            log "$name (pid $pid) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do alive "$name" || break; sleep 0.1; done
        fi
    fi
    rm -f "$f"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
# (The inner bash expands $1 itself: SC2016 does not apply.)
# shellcheck disable=SC2016
port_busy() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# True when 127.0.0.1:$1 answers an (anonymous) S3 ListBuckets with any HTTP
# status. radosgw opens its port only after its RADOS store is ready.
# shellcheck disable=SC2016
s3_answers() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET / HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$1" >&3
        read -r proto code _ <&3
        [[ $proto == HTTP/* && $code =~ ^[0-9]{3}$ ]]' _ "$1" 2>/dev/null
}

free_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 10000))
        port_busy "$p" || { echo "$p"; return 0; }
    done
    die "found no free port for the monitor"
}

check_port_arg() {
    if ! [[ ${1:-} =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 65535)); then
        die "bad PORT '${1:-}'"
    fi
}

# Seconds left before DEADLINE, for `timeout` (for which 0 means forever).
remaining() {
    ((SECONDS < DEADLINE)) || die "timed out after ${TIMEOUT}s"
    echo $((DEADLINE - SECONDS))
}

# Poll "$@" until it succeeds; fail if daemon $2 dies or the deadline passes.
wait_for() {
    local what=$1 daemon=$2
    shift 2
    until "$@"; do
        alive "$daemon" || die "$daemon died while waiting for $what"
        ((SECONDS < DEADLINE)) || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

osd_active() { grep -q 'state: booting -> active' "$DATA/log/osd.0.log" 2>/dev/null; }

# When a start fails, show the end of the logs of the daemon that was being
# waited for and of any that died, then stop what this run started, so that
# a failed start leaves nothing behind.
STARTED=()
WAITING_ON=
on_start_failure() {
    local rc=$? name
    ((rc != 0)) || return 0
    for name in "${STARTED[@]}"; do
        [[ $name == "$WAITING_ON" ]] || ! alive "$name" || continue
        log "---- tail of $DATA/log/${ENTITY[$name]}.log ----"
        tail -n 25 "$DATA/log/${ENTITY[$name]}.log" >&2 2>/dev/null || true
        log "---- tail of $DATA/log/$name.out ----"
        tail -n 10 "$DATA/log/$name.out" >&2 || true
    done
    if [[ $WAITING_ON == user-create ]]; then
        log "---- tail of $DATA/log/user-create.out ----"
        tail -n 10 "$DATA/log/user-create.out" >&2 || true
    fi
    log "start failed; stopping the daemons it started"
    for name in rgw osd mon; do
        [[ " ${STARTED[*]} " != *" $name "* ]] || stop_daemon "$name"
    done
    exit "$rc"
}

print_env() {
    local port
    port=$(<"$DATA/rgw_port")
    # %q: safe to eval whatever characters the keys have.
    cat <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$(printf %q "$(<"$DATA/access_key")")
export AWS_SECRET_ACCESS_KEY=$(printf %q "$(<"$DATA/secret_key")")
export AWS_DEFAULT_REGION=us-east-1
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
EOF
}

# --- config ------------------------------------------------------------------

write_conf() {
    local fsid=$1 mon_port=$2
    cat >"$CONF" <<EOF
# Written by tests/services/ceph_rgw.sh; rewritten by every 'start'.
[global]
fsid = $fsid
# msgr2 only: radosgw and the OSD then agree on the monitor's address.
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1

# A local test cluster: no cephx keys. Connection mode 'secure' needs cephx,
# and radosgw asks for it by default, so use plain crc everywhere.
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc

# Keep every file in DATA_DIR, away from /var/lib/ceph, /var/log/ceph, /run.
run_dir = $DATA/run
admin_socket = $DATA/run/\$name.asok
pid_file = $DATA/run/ceph-\$name.pid
log_file = $DATA/log/\$name.log
mon_cluster_log_file = $DATA/log/cluster.log
crash_dir = $DATA/crash
keyring = $DATA/keyring
mon_data = $DATA/mon/\$name
osd_data = $DATA/osd/\$name
# Plugins come from the unpacked tree, not /usr/lib.
plugin_dir = $LIB/ceph
erasure_code_dir = $LIB/ceph/erasure-code
osd_class_dir = $LIB/rados-classes

# One OSD: single-copy pools, few placement groups, no manager daemon.
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_max_pg_per_osd = 1000
# Commit monitor changes quickly: radosgw creates its pools one by one at
# first start, each waiting for a new OSD map.
paxos_propose_interval = 0.1
paxos_min_wait = 0.01

[osd]
osd_objectstore = memstore
memstore_device_bytes = $MEMSTORE_BYTES
osd_mon_shutdown_timeout = 1

[client.rgw]
rgw_data = $DATA/rgw
# The default (512 threads) is sized for production.
rgw_thread_pool_size = 16
# Tests overwrite and delete objects a lot; reclaim RAM after a minute, not 2 h.
rgw_gc_obj_min_wait = 60
rgw_gc_processor_period = 60
EOF
}

# --- commands ----------------------------------------------------------------

start_rgw() {
    local port=$1
    check_port_arg "$port"
    alive rgw && die "radosgw already runs for $DATA"
    alive osd || die "the cluster in $DATA is not running; use 'start'"
    port_busy "$port" && die "port $port on 127.0.0.1 is already in use"
    echo "$port" >"$DATA/rgw_port"
    WAITING_ON=rgw
    launch rgw radosgw -n client.rgw --rgw_frontends "beast endpoint=127.0.0.1:$port"
    wait_for "radosgw to answer on 127.0.0.1:$port" rgw s3_answers "$port"
}

cmd_start() {
    local port=$1 name fsid mon_port t0=$SECONDS
    check_port_arg "$port"
    DEADLINE=$((SECONDS + TIMEOUT))
    if [[ ! -f $CEPH_DIR/installed ]]; then
        log "Ceph not found in $CEPH_DIR; running install_ceph.sh"
        "$HERE/install_ceph.sh" "$CEPH_DIR"
        DEADLINE=$((SECONDS + TIMEOUT))
    fi
    for name in mon osd rgw; do
        alive "$name" && die "a cluster already runs for $DATA; stop it first"
    done
    port_busy "$port" && die "port $port on 127.0.0.1 is already in use"
    # Refuse to wipe a folder that is not ours.
    if [[ ! -e $DATA/.ceph_rgw ]] && [[ -n $(ls -A "$DATA") ]]; then
        die "$DATA is not empty and was not made by ceph_rgw.sh"
    fi
    rm -rf "${DATA:?}"/{mon,osd,rgw,run,log,crash,ceph.conf,monmap,osdmap,keyring,rgw_port,access_key,secret_key,env}
    mkdir -p "$DATA"/{mon,osd/osd.0,rgw,run,log,crash}
    touch "$DATA/.ceph_rgw"
    printf '%s\n' "$ACCESS_KEY" >"$DATA/access_key"
    printf '%s\n' "$SECRET_KEY" >"$DATA/secret_key"
    trap on_start_failure EXIT

    fsid=$(cat /proc/sys/kernel/random/uuid)
    mon_port=${CEPH_MON_PORT:-$(free_port)}
    write_conf "$fsid" "$mon_port"

    # Without the python `ceph` CLI there is no 'osd new': instead the
    # monitor is created with an OSD map that already has a slot for osd.0.
    "$BIN/monmaptool" --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" \
        "$DATA/monmap" >>"$DATA/log/mkfs.out" 2>&1
    "$BIN/osdmaptool" --createsimple 1 --clobber "$DATA/osdmap" >>"$DATA/log/mkfs.out" 2>&1
    "$BIN/ceph-mon" -c "$CONF" -i a --mkfs --monmap "$DATA/monmap" --osdmap "$DATA/osdmap" \
        >>"$DATA/log/mkfs.out" 2>&1 || die "ceph-mon --mkfs failed; see $DATA/log/mkfs.out"
    WAITING_ON=mon
    launch mon ceph-mon -i a

    "$BIN/ceph-osd" -c "$CONF" -i 0 --mkfs --osd-uuid "$(cat /proc/sys/kernel/random/uuid)" \
        >>"$DATA/log/mkfs.out" 2>&1 || die "ceph-osd --mkfs failed; see $DATA/log/mkfs.out"
    WAITING_ON=osd
    launch osd ceph-osd -i 0
    wait_for "osd.0 to join the cluster" osd osd_active

    # Creating the user also creates radosgw's pools and default zone, so it
    # must not race radosgw's own first start: do it before.
    WAITING_ON=user-create
    timeout "$(remaining)" "$BIN/radosgw-admin" -c "$CONF" user create \
        --uid tuner --display-name "tuner tests" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
        >"$DATA/log/user-create.out" 2>&1 ||
        die "radosgw-admin user create failed or timed out"

    start_rgw "$port"
    trap - EXIT
    print_env >"$DATA/env"
    log "S3 on http://127.0.0.1:$port after $((SECONDS - t0)) s (data: $DATA)"
    cat "$DATA/env"
}

cmd_stop() {
    local name
    for name in rgw osd mon; do stop_daemon "$name"; done
}

cmd_status() {
    local name any=1
    for name in mon osd rgw; do
        if alive "$name"; then
            echo "$name: running (pid $(<"$(pidfile "$name")"))"
            any=0
        else
            echo "$name: stopped"
        fi
    done
    return $any
}

[[ $# -ge 2 ]] || usage
cmd=$1
case $cmd in
    start) set_data_dir "$2" create ;;
    stop) set_data_dir "$2" stop ;;
    *) set_data_dir "$2" existing ;;
esac
case $cmd in
    start)
        [[ $# -eq 3 ]] || usage
        cmd_start "$3"
        ;;
    stop)
        cmd_stop
        ;;
    stop-rgw)
        stop_daemon rgw
        ;;
    start-rgw | restart-rgw)
        port=${3:-$(cat "$DATA/rgw_port" 2>/dev/null || true)}
        [[ -n $port ]] || die "no PORT given and none recorded in $DATA"
        [[ $cmd == restart-rgw ]] && stop_daemon rgw
        DEADLINE=$((SECONDS + TIMEOUT))
        trap on_start_failure EXIT
        start_rgw "$port"
        trap - EXIT
        print_env >"$DATA/env"
        log "radosgw answers on http://127.0.0.1:$port"
        ;;
    env)
        [[ -s $DATA/env ]] || die "no cluster was started in $DATA"
        cat "$DATA/env"
        ;;
    status)
        cmd_status
        ;;
    *)
        usage
        ;;
esac
