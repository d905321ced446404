#!/usr/bin/env bash
# healert.sh — run healert-agent on this machine (local mode), deploy it as a DaemonSet
# (Kubernetes mode), and manage the separate Python backend (HEALERT_BACKEND_DIR) the way the
# Go project's script did. Same command names and flags as the Go script; `./healert.sh help`.
#
# What this script owns and why it looks the way it does:
# - The agent is the only parser of rules.yaml: `validate`, `restart` and `test` call the
#   agent binary (`healert-agent validate` / `replay`), never a second parser.
# - Secrets travel through the environment and stdin only: the API key lives in .env files
#   (mode 600), is exported to the processes we start, is piped to kubectl on stdin, and is
#   never put on a command line (visible in ps) or printed (only its length is).
# - .env files are parsed as NAME=value lines, never `source`d: a .env is data, not code.
# - Local mode needs no root when the audit log is readable; runtime files (pid files, logs,
#   checkpoint) live under "$HEALERT_AGENT_DIR/run" (mode 700).
#
# Copyright 2026 Healert OÜ — Apache-2.0 (see LICENSE).

set -euo pipefail
umask 077

readonly SCRIPT_VERSION="0.2.0"
SCRIPT_NAME=$(basename "${BASH_SOURCE[0]}")
readonly SCRIPT_NAME
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

# Every variable the agent reads (src/config.rs VARS; a test keeps this list in sync). Only
# these names, and SCRIPT_VARS below, are taken from the agent's .env file.
AGENT_VARS=(
  HEALERT_BACKEND_URL
  HEALERT_API_KEY
  AUDIT_LOG_PATH
  RULES_PATH
  ENTITY_NAMESPACE
  K8S_NAMESPACE
  CHECKPOINT_PATH
  START_AT
  POLL_INTERVAL
  MAX_LINE_BYTES
  QUEUE_CAPACITY
  HTTP_TIMEOUT
  DEAD_LETTER_PATH
  MAX_EVENTS_PER_MINUTE
  SHUTDOWN_GRACE
  SUPPRESS_WINDOW
  HEALTH_ADDR
  LOG_FORMAT
  LOG_LEVEL
  HEALERT_MODE
  AUDIT_SOURCE
  AUDIT_FORMAT
  AUDIT_WEBHOOK_ADDR
  AUDIT_WEBHOOK_TOKEN
  AUDIT_WEBHOOK_INSECURE_NO_TOKEN
  AUDIT_WEBHOOK_MAX_BODY
  SPOOL_PATH
  SPOOL_MAX_BYTES
)
# Variables only this script reads (documented in `help`, docs/local-mode.md and docs/tls.md).
SCRIPT_VARS=(HEALERT_HOST HEALERT_PORT HEALERT_AGENT_BIN KUBECTL HEALERT_RULES_SOURCE HEALERT_TLS_CA HEALERT_TLS_CERT HEALERT_TLS_KEY HEALERT_TLS_LOCAL_PORT HEALERT_STUNNEL)

readonly DEFAULT_AUDIT_LOG="/var/log/kubernetes/audit/audit.log"
readonly SELFTEST_WORKLOAD="healert-selftest"
# The namespace daemonset.yaml deploys into (its Secret is created there too).
readonly K8S_NS="healert-system"
# cmd_test's scratch directory and `replay --send` process, global so the EXIT trap still sees
# them after the function returns; TEST_DEADLINE is its deadline in $SECONDS.
SELFTEST_TMP=""
SELFTEST_PID=""
TEST_DEADLINE=0
# Where the script was started: processes we start run there (commands that use run/ change
# into it), and relative paths from the environment mean paths from there.
ORIG_PWD=$PWD
RUN_ENTERED=false
RUN_PID=""

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  RED=$'\033[0;31m' GREEN=$'\033[0;32m' TEAL=$'\033[0;36m' AMBER=$'\033[0;33m'
  BOLD=$'\033[1m' DIM=$'\033[2m' RESET=$'\033[0m'
else
  RED='' GREEN='' TEAL='' AMBER='' BOLD='' DIM='' RESET=''
fi

_info() { printf '%s[INFO]%s  %s\n' "$TEAL" "$RESET" "$*"; }
_ok() { printf '%s[OK]%s    %s\n' "$GREEN" "$RESET" "$*"; }
_warn() { printf '%s[WARN]%s  %s\n' "$AMBER" "$RESET" "$*" >&2; }
_err() { printf '%s[ERROR]%s %s\n' "$RED" "$RESET" "$*" >&2; }
_die() {
  _err "$*"
  exit 1
}
_usage_die() {
  _err "$*"
  printf 'Run ./%s help for every command.\n' "$SCRIPT_NAME" >&2
  exit 2
}
_dim() { printf '        %s%s%s\n' "$DIM" "$*" "$RESET"; }
_header() { printf '\n  %s%s%s\n\n' "$BOLD" "$*" "$RESET"; }

# =============================================================================
# Configuration: ~/.healert-config (directories) → environment → .env files
# =============================================================================

# _env_check_perms FILE: a .env holds the API key. Refuse someone else's file (it could
# redirect our processes); tighten a readable-by-others file to 600 instead of failing.
_env_check_perms() {
  local file=$1 owner mode
  owner=$(stat -c '%u' "$file" 2>/dev/null || stat -f '%u' "$file")
  mode=$(stat -c '%a' "$file" 2>/dev/null || stat -f '%Lp' "$file")
  if [[ "$owner" != "$(id -u)" ]]; then
    _die "$file belongs to uid $owner, not to you (uid $(id -u)); refusing to read it. Fix: sudo chown $(id -u) '$file'"
  fi
  if ((8#$mode & 8#077)); then
    chmod 600 "$file"
    _warn "$file was mode $mode (readable by others); changed to 600"
  fi
}

# _allowed NAME LIST...: is NAME one of LIST ("*" allows any)?
_allowed() {
  local name=$1 n
  shift
  for n in "$@"; do
    [[ "$n" == "*" || "$n" == "$name" ]] && return 0
  done
  return 1
}

# _env_load FILE NAMES...: export NAME=value lines of FILE whose NAME is allowed and not
# already set in the environment (an explicit environment variable wins over the file).
_env_load() {
  local file=$1 line key val lineno=0
  shift
  [[ -f "$file" ]] || return 0
  _env_check_perms "$file"
  while IFS= read -r line || [[ -n "$line" ]]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    line=${line#export }
    if [[ ! "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      _warn "$file:$lineno: not NAME=value; line ignored"
      continue
    fi
    key=${BASH_REMATCH[1]}
    val=${BASH_REMATCH[2]}
    if [[ "$val" =~ ^\"(.*)\"$ || "$val" =~ ^\'(.*)\'$ ]]; then
      val=${BASH_REMATCH[1]}
    fi
    if ! _allowed "$key" "$@"; then
      _warn "$file:$lineno: $key is not a variable healert reads; ignored (see .env.example)"
      continue
    fi
    [[ -n "${!key+x}" ]] && continue
    export "$key=$val"
  done <"$file"
}

# _env_get FILE NAME: the value of NAME in FILE (empty when absent). Never printed by callers
# for HEALERT_API_KEY.
_env_get() {
  local file=$1 name=$2 line
  [[ -f "$file" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    line=${line%$'\r'}
    line=${line#export }
    if [[ "$line" == "$name="* ]]; then
      line=${line#"$name="}
      if [[ "$line" =~ ^\"(.*)\"$ || "$line" =~ ^\'(.*)\'$ ]]; then line=${BASH_REMATCH[1]}; fi
      printf '%s' "$line"
    fi
  done <"$file"
}

# _env_set FILE NAME VALUE: replace or add NAME=VALUE, atomically, mode 600. The value goes
# through printf (a builtin), so it never appears in any process's argv.
_env_set() {
  local file=$1 name=$2 value=$3 dir tmp
  [[ "$value" != *$'\n'* ]] || _die "$name: a value cannot contain a newline"
  dir=$(dirname "$file")
  mkdir -p "$dir"
  tmp=$(mktemp "$dir/.env.XXXXXX")
  if [[ -f "$file" ]]; then
    grep -v -e "^$name=" -e "^export $name=" "$file" >"$tmp" || true
  fi
  printf '%s=%s\n' "$name" "$value" >>"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$file"
}

_load_dirs() {
  local cfg="$HOME/.healert-config"
  if [[ -f "$cfg" ]]; then
    _env_load "$cfg" HEALERT_BACKEND_DIR HEALERT_AGENT_DIR
  fi
  BACKEND_DIR=${HEALERT_BACKEND_DIR:-$HOME/healert-backend}
  AGENT_DIR=${HEALERT_AGENT_DIR:-$SCRIPT_DIR}
  # Absolute, because commands that use run/ change into it (see _run_enter).
  [[ "$BACKEND_DIR" == /* ]] || BACKEND_DIR="$ORIG_PWD/$BACKEND_DIR"
  [[ "$AGENT_DIR" == /* ]] || AGENT_DIR="$ORIG_PWD/$AGENT_DIR"
  if [[ -n "${HEALERT_AGENT_BIN:-}" && "$HEALERT_AGENT_BIN" != /* ]]; then
    export HEALERT_AGENT_BIN="$ORIG_PWD/$HEALERT_AGENT_BIN"
  fi
  RUN_DIR="$AGENT_DIR/run"
  AGENT_ENV="$AGENT_DIR/.env"
  BACKEND_ENV="$BACKEND_DIR/.env"
  AGENT_LOG="$RUN_DIR/agent.log"
  BACKEND_LOG="$RUN_DIR/backend.log"
  DAEMONSET_YAML="$SCRIPT_DIR/daemonset.yaml"
}

# _load_agent_config: the agent's settings from .env, then the script's defaults for local
# mode. Exports everything the agent reads, so `start agent` passes them by environment.
_load_agent_config() {
  _env_load "$AGENT_ENV" "${AGENT_VARS[@]}" "${SCRIPT_VARS[@]}"
  local host=${HEALERT_HOST:-127.0.0.1} port=${HEALERT_PORT:-8000}
  export HEALERT_BACKEND_URL=${HEALERT_BACKEND_URL:-http://$host:$port}
  export AUDIT_LOG_PATH=${AUDIT_LOG_PATH:-$DEFAULT_AUDIT_LOG}
  if [[ -z "${RULES_PATH:-}" ]]; then
    if [[ -f "$AGENT_DIR/rules.yaml" ]]; then RULES_PATH="$AGENT_DIR/rules.yaml"; else RULES_PATH="$SCRIPT_DIR/rules.yaml"; fi
  fi
  # The agent runs with its own working directory; give it absolute paths.
  [[ "$RULES_PATH" == /* ]] || RULES_PATH="$PWD/$RULES_PATH"
  export RULES_PATH
  [[ "$AUDIT_LOG_PATH" == /* ]] || AUDIT_LOG_PATH="$PWD/$AUDIT_LOG_PATH"
  export ENTITY_NAMESPACE=${ENTITY_NAMESPACE:-default}
  # The DaemonSet's namespace: excluded from detection in local mode too.
  export K8S_NAMESPACE=${K8S_NAMESPACE:-healert-system}
  # Local mode keeps a checkpoint so a restart neither loses nor repeats events.
  export CHECKPOINT_PATH=${CHECKPOINT_PATH:-$RUN_DIR/checkpoint}
  # A refused key is then reported with the local fix (.env, ./healert.sh restart agent).
  export HEALERT_MODE=${HEALERT_MODE:-local}
  # The webhook source (AUDIT_SOURCE=webhook) keeps accepted batches in run/spool, and its
  # checkpoint beside them (a file log's checkpoint cannot be reused for the spool).
  if [[ "${AUDIT_SOURCE:-file}" == webhook ]]; then
    export SPOOL_PATH=${SPOOL_PATH:-$RUN_DIR/spool}
    [[ "$SPOOL_PATH" == /* ]] || SPOOL_PATH="$PWD/$SPOOL_PATH"
    [[ "$CHECKPOINT_PATH" != "$RUN_DIR/checkpoint" ]] || CHECKPOINT_PATH="$SPOOL_PATH/checkpoint"
  fi
}

# =============================================================================
# The agent binary: built with cargo when missing or older than the sources
# =============================================================================

_agent_bin() {
  if [[ -n "${HEALERT_AGENT_BIN:-}" ]]; then
    [[ -x "$HEALERT_AGENT_BIN" && -f "$HEALERT_AGENT_BIN" ]] ||
      _die "HEALERT_AGENT_BIN=$HEALERT_AGENT_BIN is not an executable file"
    AGENT_BIN=$HEALERT_AGENT_BIN
    return 0
  fi
  if [[ ! -f "$SCRIPT_DIR/Cargo.toml" ]]; then
    AGENT_BIN=$(command -v healert-agent || true)
    [[ -n "$AGENT_BIN" ]] ||
      _die "no agent binary: no Cargo.toml beside $SCRIPT_NAME and no healert-agent in PATH. Fix: set HEALERT_AGENT_BIN=/path/to/healert-agent"
    return 0
  fi
  AGENT_BIN="$SCRIPT_DIR/target/release/healert-agent"
  local newer=""
  if [[ -x "$AGENT_BIN" ]]; then
    newer=$(find "$SCRIPT_DIR/src" "$SCRIPT_DIR/Cargo.toml" "$SCRIPT_DIR/Cargo.lock" -newer "$AGENT_BIN" -print 2>/dev/null | head -n 1)
  fi
  if [[ ! -x "$AGENT_BIN" || -n "$newer" ]]; then
    command -v cargo >/dev/null 2>&1 ||
      _die "cargo not found: install Rust (https://rustup.rs), or set HEALERT_AGENT_BIN to a built healert-agent"
    if [[ -n "$newer" ]]; then
      _info "Sources changed since the last build ($newer); rebuilding the agent..." >&2
    else
      _info "Building the agent (cargo build --release)..." >&2
    fi
    (cd "$SCRIPT_DIR" && cargo build --release --locked --quiet) >&2 ||
      _die "cargo build --release failed (output above)"
  fi
}

# =============================================================================
# run/: pid files, logs and the TLS tunnel's configuration, never written through a link
# =============================================================================
# When this script runs as root in a checkout another user can write, a planted link (run/
# itself, or run/agent.log) would make root append to or chmod any file. So run/ must be a real
# directory owned by the user running the script (created 700), and each file in it a regular
# file of that user (created 600 with O_EXCL, whatever the umask). The checks are made on the
# directory the script then works in: it changes into run/ and compares the physical path with
# the expected one, and from then on names files relative to it, so renaming run/ (or a parent)
# after the check cannot redirect a write.

_owner() { stat -c '%u' "$1" 2>/dev/null || stat -f '%u' "$1"; }

# _run_enter [create]: change into run/ after the checks above (once per invocation). Without
# `create`, returns 1 when run/ does not exist (nothing was ever started).
_run_enter() {
  local want here owner
  [[ "$RUN_ENTERED" == true ]] && return 0
  if [[ -L "$RUN_DIR" ]]; then
    _die "$RUN_DIR is a symbolic link (to $(readlink "$RUN_DIR")); healert.sh never writes through a link. Fix: rm '$RUN_DIR' (it is created again as a directory)"
  fi
  if [[ ! -e "$RUN_DIR" ]]; then
    [[ "${1:-}" == create ]] || return 1
    mkdir -p "$AGENT_DIR"
    mkdir -m 700 "$RUN_DIR" || _die "cannot create $RUN_DIR"
  fi
  [[ -d "$RUN_DIR" ]] || _die "$RUN_DIR is not a directory. Fix: remove it (it is created again as a directory)"
  want="$(cd -P "$AGENT_DIR" && pwd)/run"
  cd -P "$RUN_DIR" || _die "cannot enter $RUN_DIR"
  here=$(pwd -P)
  [[ "$here" == "$want" ]] || _die "$RUN_DIR changed while it was being checked (it is now $here); refusing to use it"
  owner=$(_owner .)
  [[ "$owner" == "$(id -u)" ]] ||
    _die "$RUN_DIR belongs to uid $owner, not to you (uid $(id -u)); refusing to write pid files and logs there. Fix: run as uid $owner, or remove the directory (it is created again)"
  chmod 700 .
  RUN_ENTERED=true
}

# _run_file NAME: make run/NAME a regular file of ours, mode 600: created with O_EXCL (bash's
# noclobber) when missing; a link, another user's file or a non-file is refused.
_run_file() {
  local f=$1 owner
  _run_enter create
  if [[ -L "$f" ]]; then
    _die "$RUN_DIR/$f is a symbolic link (to $(readlink "$f")); healert.sh never writes through a link. Fix: rm '$RUN_DIR/$f'"
  fi
  if [[ -e "$f" ]]; then
    [[ -f "$f" ]] || _die "$RUN_DIR/$f is not a regular file. Fix: remove it"
    owner=$(_owner "$f")
    [[ "$owner" == "$(id -u)" ]] ||
      _die "$RUN_DIR/$f belongs to uid $owner, not to you (uid $(id -u)); refusing to write it. Fix: rm '$RUN_DIR/$f'"
  else
    (set -o noclobber && : >"$f") 2>/dev/null || _die "cannot create $RUN_DIR/$f"
  fi
  chmod 600 "$f"
}

# _run_write NAME TEXT: replace run/NAME by TEXT atomically (a new O_EXCL temporary file, mode
# 600, renamed over NAME: a link named NAME is replaced, never followed).
_run_write() {
  local f=$1 tmp
  _run_enter create
  [[ -L "$f" || ! -d "$f" ]] || _die "$RUN_DIR/$f is a directory. Fix: remove it"
  tmp=$(mktemp "$f.XXXXXX") || _die "cannot create a file in $RUN_DIR"
  printf '%s' "$2" >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$f"
}

# =============================================================================
# Processes: which process a pid file names
# =============================================================================
# A pid file alone cannot tell our process from an unrelated one that got the same pid later
# (after a crash or a reboot), and its command line proves nothing (any process can mention
# "healert-agent" in its arguments). So beside run/NAME.pid the script records run/NAME.ident:
# "PID START BOOT EXE", where START is the process's start time (field 22 of /proc/PID/stat,
# clock ticks since boot), BOOT the kernel's boot id and EXE the real path of its executable
# (/proc/PID/exe). A process is ours only if all of them match; `stop` signals nothing else.

# _proc_start PID: the start time of PID (empty if it does not exist).
_proc_start() {
  local stat f
  if [[ -d /proc/self ]]; then
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # The command name (field 2) is in parentheses and may contain spaces or parentheses.
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    # A zombie has exited: it is not running, whatever its pid and start time.
    [[ "${f[0]:-}" != Z ]] || return 0
    printf '%s' "${f[19]:-}"
  else
    ps -p "$1" -o lstart= 2>/dev/null | tr -s ' \t' '__'
  fi
}

# _proc_exe PID: the real path of PID's executable ("" if unknown, e.g. another user's process).
_proc_exe() {
  local e
  if [[ -d /proc/self ]]; then
    e=$(readlink "/proc/$1/exe" 2>/dev/null) || return 0
    printf '%s' "${e% (deleted)}"
  else
    ps -p "$1" -o comm= 2>/dev/null || true
  fi
}

_boot_id() {
  cat /proc/sys/kernel/random/boot_id 2>/dev/null || printf 'unknown'
}

# _record_process NAME PID: write run/NAME.ident, then run/NAME.pid. Called right after the
# start (the executable may not be exec'd yet: recorded as "-") and again once it runs.
_record_process() {
  local name=$1 pid=$2 exe
  exe=$(_proc_exe "$pid")
  [[ -n "$exe" && "$exe" != *" "* ]] || exe=-
  # Still the shell (or env, nohup) that is about to exec the program: record the start time
  # only; the executable is recorded by the second call.
  case "$(basename "$exe")" in
    bash | sh | env | nohup) exe=- ;;
  esac
  _run_write "$name.ident" "$pid $(_proc_start "$pid") $(_boot_id) $exe"$'\n'
  _run_write "$name.pid" "$pid"$'\n'
}

# _forget_process NAME: remove run/NAME.pid and run/NAME.ident (links are removed, not followed).
_forget_process() {
  _run_enter || return 0
  rm -f "$1.pid" "$1.ident"
}

# _expected_exe NAME: for a pid file without .ident (written by healert.sh 0.2.0), the
# executable the process must run; empty when unknown.
_expected_exe() {
  case "$1" in
    agent) readlink -f "${HEALERT_AGENT_BIN:-$SCRIPT_DIR/target/release/healert-agent}" 2>/dev/null || true ;;
  esac
}

# _running NAME: is our NAME (agent|backend|stunnel) running? Prints its pid and sets RUN_PID.
# A pid file naming a process that is gone or not ours is stale: reported and removed.
_running() {
  local name=$1 file line pid="" why="" ipid istart iboot iexe exe start
  RUN_PID=""
  _run_enter || return 1
  file="$name.pid"
  [[ -e "$file" || -L "$file" ]] || return 1
  if [[ -L "$file" || ! -f "$file" || "$(_owner "$file")" != "$(id -u)" ]]; then
    why="the pid file is a link, not a regular file, or not yours: not trusted"
  else
    IFS= read -r line <"$file" || true
    [[ "$line" =~ ^[1-9][0-9]{0,9}$ ]] && pid=$line
    if [[ -z "$pid" ]]; then
      why="no pid in it"
    elif ! kill -0 "$pid" 2>/dev/null; then
      why="process $pid is gone"
    elif [[ -f "$name.ident" && ! -L "$name.ident" ]]; then
      read -r ipid istart iboot iexe <"$name.ident" || true
      start=$(_proc_start "$pid")
      exe=$(_proc_exe "$pid")
      if [[ "$ipid" != "$pid" ]]; then
        why="$name.ident names pid ${ipid:-?}, the pid file $pid"
      elif [[ "$iboot" != "$(_boot_id)" ]]; then
        why="recorded before the last reboot"
      elif [[ -z "$start" || "$start" != "$istart" ]]; then
        why="process $pid started at ${start:-?}, ours at ${istart:-?} (the pid was reused)"
      elif [[ "${iexe:--}" != - && "$exe" != "$iexe" ]]; then
        why="process $pid runs ${exe:-an unknown program}, ours ran $iexe"
      fi
    else
      # A pid file from healert.sh 0.2.0 (no .ident): the executable must be the agent's.
      exe=$(_proc_exe "$pid")
      iexe=$(_expected_exe "$name")
      if [[ -z "$iexe" || "$exe" != "$iexe" ]]; then
        why="process $pid runs ${exe:-an unknown program}, not ${iexe:-a program this script can verify}"
      fi
    fi
  fi
  if [[ -z "$why" ]]; then
    RUN_PID=$pid
    printf '%s\n' "$pid"
    return 0
  fi
  _warn "stale pid file $RUN_DIR/$file (${why}; it is not a running $name); removed"
  rm -f "$file" "$name.ident"
  return 1
}

# _grace_seconds: how long `stop` waits for the agent: its SHUTDOWN_GRACE plus 5 s.
_grace_seconds() {
  local g=${SHUTDOWN_GRACE:-20s} n
  if [[ "$g" =~ ^([0-9]+)(s)?$ ]]; then
    n=${BASH_REMATCH[1]}
  elif [[ "$g" =~ ^([0-9]+)m$ ]]; then
    n=$((BASH_REMATCH[1] * 60))
  else
    n=20
  fi
  printf '%s' $((n + 5))
}

# _stop_process NAME SECONDS: SIGTERM, wait, then SIGKILL; only ever to the process that
# _running identified (its start time is checked again before each signal, so a pid that is
# reused while we wait is left alone).
_stop_process() {
  local name=$1 wait_s=$2 pid start i
  _run_enter || true
  if ! _running "$name" >/dev/null; then
    _dim "$name is not running"
    return 0
  fi
  pid=$RUN_PID
  start=$(_proc_start "$pid")
  _info "Stopping $name (PID $pid; SIGTERM, up to ${wait_s}s)..."
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 5; i++)); do
    [[ "$(_proc_start "$pid")" == "$start" ]] || break
    sleep 0.2
  done
  if [[ "$(_proc_start "$pid")" == "$start" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    _warn "$name did not stop within ${wait_s}s; killed (the agent re-reads unacknowledged lines from its checkpoint)"
  fi
  _forget_process "$name"
  _ok "$name stopped"
}

_http_ok() {
  curl --fail --silent --show-error --max-time "${2:-3}" --output /dev/null "$1" 2>/dev/null
}

# _health_url PATH: the agent's health endpoint when HEALTH_ADDR is set (0.0.0.0 → loopback).
_health_url() {
  [[ -n "${HEALTH_ADDR:-}" ]] || return 1
  local addr=$HEALTH_ADDR
  addr=${addr/#0.0.0.0:/127.0.0.1:}
  addr=${addr/#\[::\]:/[::1]:}
  addr=${addr/#:/127.0.0.1:}
  printf 'http://%s%s' "$addr" "$1"
}

# =============================================================================
# TLS to an https:// backend: a local stunnel client (docs/tls.md)
# =============================================================================
# The agent is one std-only binary and speaks plain HTTP. When HEALERT_BACKEND_URL is
# https://HOST[:PORT][/base], `start agent` first runs stunnel as a TLS client listening on
# 127.0.0.1:HEALERT_TLS_LOCAL_PORT and gives the agent http://127.0.0.1:PORT[/base]. stunnel
# checks the backend's certificate chain against HEALERT_TLS_CA (default: the system's CA
# bundle) and its name against HOST, and presents HEALERT_TLS_CERT/HEALERT_TLS_KEY when both are
# set (mutual TLS). So the API key and the events cross the network only inside TLS. `stop`
# stops stunnel after the agent, which drains its queue through it.

readonly DEFAULT_TLS_LOCAL_PORT=18000
# Set by _tls_start: the URL the agent is given.
TLS_AGENT_URL=""

# _tls_abs NAME VALUE: VALUE as an absolute path to a readable file, or an error naming NAME.
_tls_abs() {
  local v=$2
  [[ "$v" == /* ]] || v="$ORIG_PWD/$v"
  [[ -f "$v" && -r "$v" ]] || _die "$1=$2 is not a readable file (docs/tls.md)"
  TLS_ABS=$v
}

# _tls_config: parse HEALERT_BACKEND_URL and the HEALERT_TLS_* settings into TLS_HOST,
# TLS_PORT, TLS_BASE, TLS_LPORT, TLS_CA, TLS_CERT, TLS_KEY, TLS_IS_IP; exit with the reason
# when something is wrong.
_tls_config() {
  local rest=${HEALERT_BACKEND_URL#https://} authority f
  [[ "$rest" != *[?#]* ]] || _die "HEALERT_BACKEND_URL: a query or fragment is not allowed in the base URL"
  authority=${rest%%/*}
  TLS_BASE=${rest:${#authority}}
  TLS_BASE=${TLS_BASE%/}
  [[ "$authority" != *@* ]] || _die "HEALERT_BACKEND_URL: credentials in the URL are not allowed; put the key in HEALERT_API_KEY"
  TLS_IS_IP=false
  if [[ "$authority" =~ ^\[([0-9A-Fa-f:.]+)\](:([0-9]{1,5}))?$ ]]; then
    TLS_HOST=${BASH_REMATCH[1]} TLS_PORT=${BASH_REMATCH[3]:-443} TLS_IS_IP=true
  elif [[ "$authority" =~ ^([A-Za-z0-9._-]+)(:([0-9]{1,5}))?$ ]]; then
    TLS_HOST=${BASH_REMATCH[1]} TLS_PORT=${BASH_REMATCH[3]:-443}
    [[ ! "$TLS_HOST" =~ ^[0-9.]+$ ]] || TLS_IS_IP=true
  else
    _die "HEALERT_BACKEND_URL=https://$authority: cannot read HOST[:PORT] (example: https://healert.example.com or https://10.0.0.5:8443)"
  fi
  ((10#$TLS_PORT >= 1 && 10#$TLS_PORT <= 65535)) || _die "HEALERT_BACKEND_URL: port $TLS_PORT is not in 1..65535"
  TLS_LPORT=${HEALERT_TLS_LOCAL_PORT:-$DEFAULT_TLS_LOCAL_PORT}
  if [[ ! "$TLS_LPORT" =~ ^[0-9]{1,5}$ ]] || ((10#$TLS_LPORT < 1 || 10#$TLS_LPORT > 65535)); then
    _die "HEALERT_TLS_LOCAL_PORT=$TLS_LPORT: must be a port number 1..65535 (example: $DEFAULT_TLS_LOCAL_PORT)"
  fi
  if [[ -n "${HEALERT_TLS_CA:-}" ]]; then
    _tls_abs HEALERT_TLS_CA "$HEALERT_TLS_CA"
    TLS_CA=$TLS_ABS
  else
    TLS_CA=""
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
      if [[ -r "$f" ]]; then
        TLS_CA=$f
        break
      fi
    done
    [[ -n "$TLS_CA" ]] || _die "no system CA bundle found to verify https://$TLS_HOST: set HEALERT_TLS_CA=/path/to/ca.pem (docs/tls.md)"
  fi
  TLS_CERT="" TLS_KEY=""
  if [[ -n "${HEALERT_TLS_CERT:-}" || -n "${HEALERT_TLS_KEY:-}" ]]; then
    [[ -n "${HEALERT_TLS_CERT:-}" && -n "${HEALERT_TLS_KEY:-}" ]] ||
      _die "HEALERT_TLS_CERT and HEALERT_TLS_KEY go together (a client certificate and its private key); set both or neither (docs/tls.md)"
    _tls_abs HEALERT_TLS_CERT "$HEALERT_TLS_CERT"
    TLS_CERT=$TLS_ABS
    _tls_abs HEALERT_TLS_KEY "$HEALERT_TLS_KEY"
    TLS_KEY=$TLS_ABS
  fi
}

_stunnel_bin() {
  if [[ -n "${HEALERT_STUNNEL:-}" ]]; then
    [[ -x "$HEALERT_STUNNEL" && -f "$HEALERT_STUNNEL" ]] || _die "HEALERT_STUNNEL=$HEALERT_STUNNEL is not an executable file"
    STUNNEL_BIN=$HEALERT_STUNNEL
    return 0
  fi
  STUNNEL_BIN=$(command -v stunnel || command -v stunnel4 || true)
  [[ -n "$STUNNEL_BIN" ]] ||
    _die "HEALERT_BACKEND_URL is https://: the agent reaches it through a local TLS client (stunnel), which is not installed. Fix: apt install stunnel4 (Debian/Ubuntu) or dnf install stunnel (Fedora/RHEL), or set HEALERT_STUNNEL=/path/to/stunnel (docs/tls.md)"
}

# _tls_new_log OFFSET: what stunnel logged since OFFSET bytes of run/stunnel.log.
_tls_new_log() { tail -c +"$(($1 + 1))" stunnel.log 2>/dev/null || true; }

# _tls_start: (re)start the TLS client and check the backend through it; sets TLS_AGENT_URL.
# A certificate or handshake failure stops here with stunnel's own words; an unreachable
# backend is only a warning (the agent keeps events and retries, as with http://).
_tls_start() {
  local pid i offset new conf rc code errs
  _tls_config
  _stunnel_bin
  _run_enter create
  if _running stunnel >/dev/null; then
    _stop_process stunnel 5 >/dev/null
  fi
  conf="; run/stunnel.conf, written by healert.sh (docs/tls.md). The agent sends plain HTTP to
; 127.0.0.1:$TLS_LPORT; stunnel carries it over TLS to $TLS_HOST:$TLS_PORT.
foreground = yes
pid =
syslog = no

[healert-backend]
client = yes
accept = 127.0.0.1:$TLS_LPORT
connect = $TLS_HOST:$TLS_PORT
delay = yes
sslVersionMin = TLSv1.2
verifyChain = yes
CAfile = $TLS_CA
"
  if [[ "$TLS_IS_IP" == true ]]; then
    conf+="checkIP = $TLS_HOST"$'\n'
  else
    conf+="checkHost = $TLS_HOST"$'\n'"sni = $TLS_HOST"$'\n'
  fi
  if [[ -n "$TLS_CERT" ]]; then
    conf+="cert = $TLS_CERT"$'\n'"key = $TLS_KEY"$'\n'
  fi
  _run_write stunnel.conf "$conf"
  _run_file stunnel.log
  offset=$(wc -c <stunnel.log)
  # stunnel reads stunnel.conf relative to run/ (its working directory), never through a path.
  (exec nohup "$STUNNEL_BIN" stunnel.conf) </dev/null >>stunnel.log 2>&1 &
  pid=$!
  _record_process stunnel "$pid"
  # Ready when it accepts on the local port (curl exit 7: could not connect yet).
  rc=7
  for ((i = 0; i < 50; i++)); do
    new=$(_tls_new_log "$offset")
    if ! kill -0 "$pid" 2>/dev/null || [[ "$new" == *"Binding service"*"failed"* ]]; then
      _forget_process stunnel
      printf '%s\n' "$new" | grep -v '^\[ \]' | tail -n 12 >&2
      _die "stunnel did not start (its log above; is 127.0.0.1:$TLS_LPORT in use? set HEALERT_TLS_LOCAL_PORT)"
    fi
    if [[ "$new" == *"Configuration successful"* ]]; then
      rc=0
      code=$(curl --noproxy '*' --silent --output /dev/null --write-out '%{http_code}' --max-time 10 \
        "http://127.0.0.1:$TLS_LPORT$TLS_BASE/health" 2>/dev/null) || rc=$?
      [[ "$rc" == 7 ]] || break
    fi
    sleep 0.1
  done
  _record_process stunnel "$pid"
  TLS_AGENT_URL="http://127.0.0.1:$TLS_LPORT$TLS_BASE"
  new=$(_tls_new_log "$offset")
  if [[ "${code:-000}" != 000 ]]; then
    _ok "TLS to $TLS_HOST:$TLS_PORT verified (CA $TLS_CA${TLS_CERT:+, client certificate $TLS_CERT}); stunnel PID $pid on 127.0.0.1:$TLS_LPORT"
    return 0
  fi
  errs=$(printf '%s\n' "$new" | grep -E 'CERT: |Rejected by CERT|verify failed|SSL_connect|tlsv1[0-9]* alert|sslv3 alert|wrong version number|handshake failure' | head -n 6 || true)
  if [[ -n "$errs" ]]; then
    _stop_process stunnel 5 >/dev/null
    _err "stunnel could not set up TLS with $TLS_HOST:$TLS_PORT:"
    printf '        %s\n' "${errs//$'\n'/$'\n'        }" >&2
    _die "TLS to $TLS_HOST:$TLS_PORT failed (stunnel's words above; full log: $RUN_DIR/stunnel.log); the agent was not started. Check that HEALERT_TLS_CA ($TLS_CA) is the CA that signed the backend's certificate, that the certificate names $TLS_HOST, and HEALERT_TLS_CERT/HEALERT_TLS_KEY if the backend requires a client certificate (docs/tls.md → When it fails)"
  fi
  errs=$(printf '%s\n' "$new" | grep -E 'LOG3|\[!\]' | tail -n 1 || true)
  _warn "the backend at https://$TLS_HOST:$TLS_PORT is not reachable through the TLS tunnel yet${errs:+ (stunnel: ${errs#* LOG3\[*\]: })}; the agent keeps events and retries"
}

# _tls_status: one status line for the tunnel, when HEALERT_BACKEND_URL is https://.
_tls_status() {
  printf '  %-10s' "TLS"
  if _running stunnel >/dev/null; then
    printf '%s● running%s  PID %s  stunnel: 127.0.0.1:%s → %s\n' "$GREEN" "$RESET" "$RUN_PID" \
      "${HEALERT_TLS_LOCAL_PORT:-$DEFAULT_TLS_LOCAL_PORT}" "${HEALERT_BACKEND_URL#https://}"
  else
    printf '%s● stopped%s (started by ./%s start agent)\n' "$RED" "$RESET" "$SCRIPT_NAME"
  fi
  _dim "stunnel log: $RUN_DIR/stunnel.log"
}

# =============================================================================
# Agent (local mode)
# =============================================================================

# _check_audit_log: say exactly what is wrong with the audit log before starting.
_check_audit_log() {
  local log=$AUDIT_LOG_PATH dir
  dir=$(dirname "$log")
  if [[ -e "$log" && ! -r "$log" ]]; then
    _die "cannot read $log (permission denied). Fix: put yourself in the group that owns it, e.g.
        sudo usermod -aG healert-audit \"\$USER\"   (then log in again)
      Or point the agent at another file: ./$SCRIPT_NAME configure --audit-log PATH
      See docs/daemonset.md → Audit log permissions"
  fi
  if [[ ! -e "$log" ]]; then
    if [[ -d "$dir" && ! -x "$dir" ]]; then
      _die "cannot enter $dir (permission denied): the directory needs g+rx for your group (docs/daemonset.md → Audit log permissions)"
    fi
    _warn "$log does not exist yet; the agent waits for it (is audit logging enabled? docs/daemonset.md → Audit logging)"
  fi
}

_start_agent() {
  local pid i ready url agent_url=$HEALERT_BACKEND_URL
  _run_enter create
  if _running agent >/dev/null; then
    _warn "agent already running (PID $RUN_PID)"
    if [[ "$HEALERT_BACKEND_URL" == https://* ]] && ! _running stunnel >/dev/null; then
      _warn "its TLS client (stunnel) is not running; starting it"
      _tls_start
    fi
    return 0
  fi
  _agent_bin
  [[ -f "$RULES_PATH" ]] || _die "rules file not found: $RULES_PATH. Fix: ./$SCRIPT_NAME configure --rules PATH"
  local out
  if ! out=$("$AGENT_BIN" validate "$RULES_PATH" 2>&1); then
    printf '%s\n' "$out" >&2
    _die "rules are invalid (above); the agent was not started"
  fi
  case "${AUDIT_SOURCE:-file}" in
    file) _check_audit_log ;;
    webhook)
      [[ -n "${AUDIT_WEBHOOK_TOKEN:-}" || "${AUDIT_WEBHOOK_INSECURE_NO_TOKEN:-}" == true ]] ||
        _die "AUDIT_SOURCE=webhook needs AUDIT_WEBHOOK_TOKEN (the token of the apiserver's webhook kubeconfig; docs/webhook.md). Fix: echo \"AUDIT_WEBHOOK_TOKEN=\$(head -c 24 /dev/urandom | base64)\" >> $AGENT_ENV"
      ;;
    stdin) _die "AUDIT_SOURCE=stdin reads a pipe, which a background agent has not: run it in the pipe instead, e.g. aws logs tail ... | AUDIT_SOURCE=stdin healert-agent run (docs/cloud.md)" ;;
  esac
  if [[ -z "${HEALERT_API_KEY:-}" ]]; then
    _warn "HEALERT_API_KEY is not set: a backend with auth enabled answers 401. Fix: ./$SCRIPT_NAME setup"
  fi
  if [[ "$HEALERT_BACKEND_URL" == https://* ]]; then
    # The agent speaks plain HTTP to a local TLS client (docs/tls.md).
    _tls_start
    agent_url=$TLS_AGENT_URL
  fi
  _run_file agent.log
  # stdin/stdout/stderr are redirected so nothing inherits our terminal or pipes; nohup keeps
  # the agent alive when the terminal closes (the agent installs its own SIGHUP handler). The
  # log is opened here, inside run/; the agent itself runs in the directory we were started in.
  (
    cd "$ORIG_PWD" 2>/dev/null || cd /
    exec env HEALERT_BACKEND_URL="$agent_url" nohup "$AGENT_BIN" run
  ) </dev/null >>agent.log 2>&1 &
  pid=$!
  _record_process agent "$pid"
  for ((i = 0; i < 10; i++)); do
    sleep 0.2
    if ! kill -0 "$pid" 2>/dev/null; then
      _forget_process agent
      _err "the agent exited at start; last lines of $AGENT_LOG:"
      tail -n 20 agent.log >&2 || true
      _stop_process stunnel 5 >/dev/null
      exit 1
    fi
  done
  # By now the agent's own executable runs: record it (stop checks it).
  _record_process agent "$pid"
  _ok "agent started (PID $pid)"
  _dim "log:        $AGENT_LOG"
  if [[ "${AUDIT_SOURCE:-file}" == webhook ]]; then
    _dim "webhook:    http://${AUDIT_WEBHOOK_ADDR:-0.0.0.0:8765} (spool: $SPOOL_PATH)"
  else
    _dim "audit log:  $AUDIT_LOG_PATH"
  fi
  _dim "rules:      $RULES_PATH"
  if [[ "$agent_url" != "$HEALERT_BACKEND_URL" ]]; then
    _dim "backend:    $HEALERT_BACKEND_URL (TLS by stunnel; the agent sends to $agent_url)"
  else
    _dim "backend:    $HEALERT_BACKEND_URL"
  fi
  if url=$(_health_url /readyz); then
    ready=false
    for ((i = 0; i < 25; i++)); do
      if _http_ok "$url" 1; then
        ready=true
        break
      fi
      sleep 0.2
    done
    if [[ "$ready" == true ]]; then _ok "agent ready ($url)"; else _warn "agent not ready yet ($url); see ./$SCRIPT_NAME status"; fi
  fi
}

# =============================================================================
# Backend (the separate Python project in HEALERT_BACKEND_DIR)
# =============================================================================

_backend_url() {
  printf 'http://%s:%s' "${HEALERT_HOST:-127.0.0.1}" "${HEALERT_PORT:-8000}"
}

_find_uvicorn() {
  if [[ -x "$BACKEND_DIR/venv/bin/uvicorn" ]]; then
    printf '%s' "$BACKEND_DIR/venv/bin/uvicorn"
  else
    command -v uvicorn || return 1
  fi
}

# _port_open HOST PORT: does something accept TCP connections at HOST:PORT? (bash's /dev/tcp;
# a wildcard bind address is probed on loopback.)
_port_open() {
  local host=$1
  case "$host" in
    0.0.0.0 | "") host=127.0.0.1 ;;
    "::" | "[::]") host=::1 ;;
  esac
  host=${host#[}
  host=${host%]}
  (exec 3<>"/dev/tcp/$host/$2") 2>/dev/null
}

# _listeners PORT: the pids holding a listening TCP socket on PORT, one per line (only
# processes whose descriptors we may read: our own). Returns 2 when this system cannot tell
# (neither /proc/net/tcp nor lsof).
_listeners() {
  local port=$1 inode
  if [[ -r /proc/net/tcp ]]; then
    # /proc/net/tcp{,6}: field 2 is ADDR:PORT in hex, 4 the state (0A = LISTEN), 10 the inode.
    awk -v p="$(printf ':%04X' "$port")" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null |
      while read -r inode; do
        find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null | cut -d/ -f3
      done | sort -u
    return 0
  fi
  if command -v lsof >/dev/null 2>&1; then
    lsof -nP -t -iTCP:"$port" -sTCP:LISTEN 2>/dev/null | sort -u
    return 0
  fi
  return 2
}

# _describe_pids PIDS...: "PID 123 (command line)" for each, for messages.
# _cmdline PID: the command line of PID, for messages only (never to identify a process).
_cmdline() {
  if [[ -r "/proc/$1/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else
    ps -p "$1" -o args= 2>/dev/null || true
  fi
}

_describe_pids() {
  local pid out=""
  for pid in "$@"; do
    out+="${out:+, }PID $pid ($(_cmdline "$pid" | cut -c1-120 | sed 's/ *$//'))"
  done
  printf '%s' "$out"
}

# _start_backend: uvicorn in HEALERT_BACKEND_DIR on HEALERT_HOST:HEALERT_PORT. "Healthy" means
# more than "something answers /health": the port must be free before we start, and the process
# we started must be the one listening on it when /health answers. Otherwise another server
# (an old backend, any other program) would be mistaken for ours while uvicorn died with
# "address already in use".
_start_backend() {
  local pid uvicorn i url host=${HEALERT_HOST:-127.0.0.1} port=${HEALERT_PORT:-8000} others owners="" rc verified
  _run_enter create
  if pid=$(_running backend); then
    _warn "backend already running (PID $pid)"
    return 0
  fi
  [[ -d "$BACKEND_DIR" ]] || _die "backend directory not found: $BACKEND_DIR. Fix: export HEALERT_BACKEND_DIR=/path/to/backend (or ./$SCRIPT_NAME init)"
  [[ -f "$BACKEND_DIR/main.py" ]] || _die "main.py not found in $BACKEND_DIR: is HEALERT_BACKEND_DIR the backend checkout?"
  uvicorn=$(_find_uvicorn) || _die "uvicorn not found. Fix: ./$SCRIPT_NAME deps --install"
  url=$(_backend_url)
  if _port_open "$host" "$port"; then
    rc=0
    others=$(_listeners "$port") || rc=$?
    # shellcheck disable=SC2086 # one pid per word
    [[ -z "$others" ]] || others=" by $(_describe_pids $others)"
    if _http_ok "$url/health" 2; then
      _die "$host:$port is already in use$others, and it answers $url/health: a backend this script did not start (no live $RUN_DIR/backend.pid). Stop that process, or use another port: HEALERT_PORT=8001 ./$SCRIPT_NAME start backend (and HEALERT_BACKEND_URL for the agent)"
    fi
    _die "$host:$port is already in use$others. Stop that program, or use another port: HEALERT_PORT=8001 ./$SCRIPT_NAME start backend (and HEALERT_BACKEND_URL for the agent)"
  fi
  _run_file backend.log
  (
    # The backend's own settings (its key, scoring, database) come from its .env, in a
    # subshell so they do not leak into the agent's environment. The log (fd 3) was opened
    # inside run/ (_run_enter); the backend runs in the directory we were started in.
    cd "$ORIG_PWD" 2>/dev/null || cd /
    _env_load "$BACKEND_ENV" "*"
    export HEALERT_DB=${HEALERT_DB:-$BACKEND_DIR/healert.db}
    exec nohup "$uvicorn" main:app --app-dir "$BACKEND_DIR" --host "$host" \
      --port "$port" --log-level info </dev/null >&3 2>&3 3>&-
  ) 3>>backend.log &
  pid=$!
  _record_process backend "$pid"
  _info "backend starting (PID $pid); waiting for $url/health ..."
  verified=""
  for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    if _http_ok "$url/health" 2; then
      rc=0
      owners=$(_listeners "$port") || rc=$?
      if ((rc == 2)); then
        verified=unknown
        break
      fi
      if grep -qx "$pid" <<<"$owners"; then
        verified=yes
        break
      fi
    fi
    sleep 0.5
  done
  if [[ -n "$verified" ]]; then
    _record_process backend "$pid"
    if [[ "$verified" == yes ]]; then
      _ok "backend healthy at $url (PID $pid listens on port $port)"
    else
      _ok "backend healthy at $url"
      _warn "cannot check that PID $pid is the process listening on port $port (no /proc/net/tcp, no lsof)"
    fi
    if [[ -z "$(_env_get "$BACKEND_ENV" HEALERT_API_KEY)" ]]; then
      _warn "the backend has no HEALERT_API_KEY in $BACKEND_ENV. Fix: ./$SCRIPT_NAME setup"
    fi
    return 0
  fi
  if [[ -n "$owners" ]]; then
    # shellcheck disable=SC2086 # one pid per word
    _err "$url/health answers, but from $(_describe_pids $owners), not from the backend started here (PID $pid)"
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    _err "the backend (PID $pid) exited at start; last lines of $BACKEND_LOG:"
  else
    _err "the backend (PID $pid) did not answer $url/health within 10 s; last lines of $BACKEND_LOG:"
  fi
  tail -n 10 "$BACKEND_LOG" >&2 || true
  _stop_process backend 5
  exit 1
}

# =============================================================================
# Kubernetes
# =============================================================================

_kubectl_resolve() {
  local k=${KUBECTL:-}
  if [[ -z "$k" ]]; then
    if command -v kubectl >/dev/null 2>&1; then
      k=kubectl
    elif command -v k3s >/dev/null 2>&1; then
      k="k3s kubectl"
    else
      return 1
    fi
  fi
  read -r -a KUBECTL_CMD <<<"$k"
  command -v "${KUBECTL_CMD[0]}" >/dev/null 2>&1 || return 1
  if [[ -z "${KUBECONFIG:-}" && ! -f "$HOME/.kube/config" && -r /etc/rancher/k3s/k3s.yaml ]]; then
    export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
  fi
  return 0
}

_kubectl() { "${KUBECTL_CMD[@]}" "$@"; }

_kube_ready() {
  _kubectl_resolve || _die "kubectl not found. Fix: install kubectl, or export KUBECTL='sudo k3s kubectl'"
  _kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1 ||
    _die "cannot reach the cluster with '${KUBECTL_CMD[*]}' (KUBECONFIG=${KUBECONFIG:-unset}). k3s: export KUBECONFIG=/etc/rancher/k3s/k3s.yaml and run as a user who can read it (or KUBECTL='sudo k3s kubectl'); kubeadm: export KUBECONFIG=~/.kube/config"
  [[ -f "$DAEMONSET_YAML" ]] || _die "daemonset.yaml not found beside $SCRIPT_NAME ($DAEMONSET_YAML)"
  if grep -q 'REPLACE-WITH-BACKEND-HOST' "$DAEMONSET_YAML"; then
    _die "daemonset.yaml still has the HEALERT_BACKEND_URL placeholder: edit it to the backend address reachable from pods (not 127.0.0.1)"
  fi
}

# _k8s_apply_secret: create/update Secret healert-api-key from HEALERT_API_KEY, piped on
# stdin (printf is a builtin: the key is in no argv). Prints kubectl's verb (created,
# configured, unchanged).
_k8s_apply_secret() {
  [[ -n "${HEALERT_API_KEY:-}" ]] || _die "HEALERT_API_KEY is not set. Fix: ./$SCRIPT_NAME setup"
  local b64
  b64=$(printf '%s' "$HEALERT_API_KEY" | base64 | tr -d '\n')
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: healert-api-key\n  namespace: %s\ntype: Opaque\ndata:\n  HEALERT_API_KEY: %s\n' \
    "$K8S_NS" "$b64" | _kubectl apply -f - | awk '{print $NF}'
}

_k8s_ensure_namespace() {
  _kubectl get namespace "$K8S_NS" >/dev/null 2>&1 || _kubectl create namespace "$K8S_NS" >/dev/null
}

# _manifest_sync [--check]: copy rules.yaml into the ConfigMap block of daemonset.yaml and of
# docs/examples/daemonset-tls.yaml and webhook.yaml (between the BEGIN/END markers), and its
# SHA-256 into each pod template's annotation, so a rules change rolls the pods. With --check
# only report whether they are current.
_manifest_sync() {
  _manifest_sync_file "${1:-}" "$DAEMONSET_YAML"
  # The TLS and webhook variants ship in the repository, not necessarily beside an installed
  # script.
  local variant
  for variant in daemonset-tls.yaml webhook.yaml; do
    if [[ -f "$SCRIPT_DIR/docs/examples/$variant" ]]; then
      _manifest_sync_file "${1:-}" "$SCRIPT_DIR/docs/examples/$variant"
    fi
  done
}

_manifest_sync_file() {
  local check=$1 file=$2 src=${HEALERT_RULES_SOURCE:-$SCRIPT_DIR/rules.yaml} sum tmp bad name
  name=${file#"$SCRIPT_DIR"/}
  [[ -f "$src" ]] || _die "rules source not found: $src (set HEALERT_RULES_SOURCE)"
  [[ -f "$file" ]] || _die "not found: $file"
  # A YAML literal block (|) reproduces the file exactly only if: the first line is not
  # indented, no line is whitespace only, and the file ends in exactly one newline.
  bad=$(awk 'NR==1 && /^[ \t]/ {print "line 1 starts with whitespace"; exit}
             /^[ \t]+$/ {print "line " NR " has only whitespace"; exit}' "$src")
  [[ -z "$bad" ]] || _die "$src: $bad; remove it so the ConfigMap copy is exact"
  if [[ -s "$src" ]]; then
    [[ "$(tail -c 1 "$src" | od -An -c | tr -d ' ')" == '\n' ]] || _die "$src: add a newline at the end of the file"
    [[ "$(tail -c 2 "$src" | od -An -c | tr -d ' ')" != '\n\n' ]] || _die "$src: remove the empty lines at the end of the file"
  fi
  [[ $(grep -c '^  # BEGIN rules.yaml' "$file") == 1 && $(grep -c '^  # END rules.yaml' "$file") == 1 ]] ||
    _die "$file: expected one '  # BEGIN rules.yaml' and one '  # END rules.yaml' marker line"
  sum=$(sha256sum <"$src" | cut -c1-64)
  tmp=$(mktemp "$(dirname "$file")/.manifest.XXXXXX")
  awk -v src="$src" -v sum="$sum" '
    /^  # BEGIN rules.yaml/ {
      print
      print "  rules.yaml: |"
      while ((getline l < src) > 0) { if (l == "") print ""; else print "    " l }
      skip = 1
      next
    }
    /^  # END rules.yaml/ { skip = 0 }
    skip { next }
    /^ *healert\.io\/rules-sha256:/ {
      match($0, /^ */)
      print substr($0, 1, RLENGTH) "healert.io/rules-sha256: \"" sum "\""
      next
    }
    { print }' "$file" >"$tmp"
  if [[ "$check" == "--check" ]]; then
    if cmp -s "$tmp" "$file"; then
      rm -f "$tmp"
      _ok "$name carries $src (sha256 $sum)"
      return 0
    fi
    rm -f "$tmp"
    _die "$name is out of date with $src. Fix: ./$SCRIPT_NAME update manifest"
  fi
  chmod 644 "$tmp"
  if cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    _ok "$name already carries $src (sha256 $sum)"
  else
    mv -f "$tmp" "$file"
    _ok "$name updated from $src (sha256 $sum)"
  fi
}

# =============================================================================
# Commands
# =============================================================================

cmd_init() {
  local backend_dir=$BACKEND_DIR agent_dir=$AGENT_DIR input interactive=true
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --backend-dir) backend_dir=${2:?--backend-dir needs a PATH}; interactive=false; shift 2 ;;
      --agent-dir) agent_dir=${2:?--agent-dir needs a PATH}; interactive=false; shift 2 ;;
      *) _usage_die "init: unknown option $1 (use --backend-dir PATH, --agent-dir PATH)" ;;
    esac
  done
  if [[ "$interactive" == true ]]; then
    [[ -t 0 ]] || _usage_die "init is interactive; without a terminal use: init --backend-dir PATH --agent-dir PATH"
    read -r -p "  Backend directory [$backend_dir]: " input
    [[ -z "$input" ]] || backend_dir=$input
    read -r -p "  Agent directory [$agent_dir]: " input
    [[ -z "$input" ]] || agent_dir=$input
  fi
  [[ "$backend_dir" == /* && "$agent_dir" == /* ]] || _die "directories must be absolute paths"
  mkdir -p "$agent_dir"
  _env_set "$HOME/.healert-config" HEALERT_BACKEND_DIR "$backend_dir"
  _env_set "$HOME/.healert-config" HEALERT_AGENT_DIR "$agent_dir"
  _ok "saved to ~/.healert-config: backend=$backend_dir agent=$agent_dir"
  [[ -d "$backend_dir" ]] || _warn "$backend_dir does not exist yet (needed only for the backend commands)"
  _dim "next: ./$SCRIPT_NAME deps, then ./$SCRIPT_NAME setup"
}

_dep() { # label command hint
  if command -v "$2" >/dev/null 2>&1; then
    _ok "$1 — $(command -v "$2")"
    return 0
  fi
  _warn "$1 — not found. $3"
  return 1
}

cmd_deps() {
  local missing=0 install=false
  [[ "${1:-}" == "--install" ]] && install=true
  _header "Dependencies"
  if ((BASH_VERSINFO[0] >= 4)); then
    _ok "bash ${BASH_VERSION}"
  else
    _warn "bash ${BASH_VERSION}: 4 or newer needed"
    missing=$((missing + 1))
  fi
  _dep curl curl "apt install curl" || missing=$((missing + 1))
  _dep sha256sum sha256sum "apt install coreutils" || missing=$((missing + 1))
  _dep openssl openssl "optional: /dev/urandom is used without it" || true
  if [[ -n "${HEALERT_AGENT_BIN:-}" ]]; then
    if [[ -x "$HEALERT_AGENT_BIN" ]]; then
      _ok "agent binary — $HEALERT_AGENT_BIN"
    else
      _warn "HEALERT_AGENT_BIN=$HEALERT_AGENT_BIN is not executable"
      missing=$((missing + 1))
    fi
  else
    _dep "cargo (builds the agent)" cargo "install Rust: https://rustup.rs" || missing=$((missing + 1))
  fi
  _dep "kubectl (Kubernetes mode only)" kubectl "https://kubernetes.io/docs/tasks/tools/" || true
  if [[ -d "$BACKEND_DIR" ]]; then
    _dep "python3 (backend)" python3 "apt install python3 python3-venv" || missing=$((missing + 1))
    if _find_uvicorn >/dev/null; then
      _ok "uvicorn — $(_find_uvicorn)"
    elif [[ "$install" == true ]]; then
      _info "creating $BACKEND_DIR/venv and installing the backend's requirements..."
      python3 -m venv "$BACKEND_DIR/venv" || _die "python3 -m venv failed. Fix: apt install python3-venv"
      if [[ -f "$BACKEND_DIR/requirements.txt" ]]; then
        "$BACKEND_DIR/venv/bin/pip" install --quiet -r "$BACKEND_DIR/requirements.txt"
      else
        "$BACKEND_DIR/venv/bin/pip" install --quiet fastapi uvicorn pydantic slowapi
      fi
      _ok "uvicorn — $(_find_uvicorn)"
    else
      _warn "uvicorn — not found. Fix: ./$SCRIPT_NAME deps --install"
      missing=$((missing + 1))
    fi
  else
    _dim "backend directory $BACKEND_DIR not found (only needed for the backend commands)"
  fi
  if ((missing == 0)); then
    _ok "all dependencies satisfied; next: ./$SCRIPT_NAME setup"
  else
    _die "$missing dependency(ies) missing (above)"
  fi
}

_key_generate() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n'
  else
    head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
  fi
}

cmd_setup() {
  local rotate=false answer key dir verb
  case "${1:-}" in
    "") ;;
    rotate | --rotate) rotate=true ;;
    *) _usage_die "setup: unknown argument $1 (did you mean: setup rotate)" ;;
  esac
  if [[ "$rotate" == false && -n "$(_env_get "$AGENT_ENV" HEALERT_API_KEY)" ]]; then
    [[ -t 0 ]] || _die "an API key is already configured in $AGENT_ENV; to replace it run: ./$SCRIPT_NAME setup rotate"
    read -r -p "  An API key is already configured. Replace it? [y/N] " answer
    [[ "$answer" =~ ^[Yy]$ ]] || {
      _info "unchanged"
      return 0
    }
  fi
  key=$(_key_generate)
  [[ ${#key} -ge 32 ]] || _die "could not generate a key (openssl or /dev/urandom needed)"
  _env_set "$AGENT_ENV" HEALERT_API_KEY "$key"
  _ok "API key (${#key} chars) written to $AGENT_ENV (mode 600)"
  if [[ -d "$BACKEND_DIR" ]]; then
    _env_set "$BACKEND_ENV" HEALERT_API_KEY "$key"
    _ok "same key written to $BACKEND_ENV (mode 600)"
  else
    _warn "backend directory $BACKEND_DIR not found: give the backend the same HEALERT_API_KEY yourself"
  fi
  for dir in "$AGENT_DIR" "$BACKEND_DIR"; do
    if [[ -d "$dir/.git" ]] && ! grep -qx '.env' "$dir/.gitignore" 2>/dev/null; then
      printf '.env\n' >>"$dir/.gitignore"
      _ok "added .env to $dir/.gitignore"
    fi
  done
  if _kubectl_resolve && _kubectl get --raw /readyz --request-timeout=3s >/dev/null 2>&1; then
    export HEALERT_API_KEY=$key
    _k8s_ensure_namespace
    verb=$(_k8s_apply_secret)
    _ok "Kubernetes Secret healert-api-key in $K8S_NS: $verb"
  fi
  unset key
  if [[ "$rotate" == true ]]; then
    _info "key rotated; apply it with ./$SCRIPT_NAME restart (and ./$SCRIPT_NAME update kubernetes)"
  else
    _info "next: ./$SCRIPT_NAME configure --audit-log PATH, then ./$SCRIPT_NAME start"
  fi
}

cmd_configure() {
  if [[ "${1:-}" == "scoring" ]]; then
    shift
    cmd_configure_scoring "$@"
    return
  fi
  local audit="" rules="" ns="" any=false input
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --audit-log) audit=${2:?--audit-log needs a PATH}; any=true; shift 2 ;;
      --rules) rules=${2:?--rules needs a PATH}; any=true; shift 2 ;;
      --namespace) ns=${2:?--namespace needs a NAME}; any=true; shift 2 ;;
      *) _usage_die "configure: unknown option $1 (use --audit-log PATH, --rules PATH, --namespace NS, or: configure scoring)" ;;
    esac
  done
  if [[ "$any" == false ]]; then
    [[ -t 0 ]] || _usage_die "configure is interactive; without a terminal use its flags"
    read -r -p "  Audit log path [$AUDIT_LOG_PATH]: " input
    audit=$input
    read -r -p "  Rules file [$RULES_PATH]: " input
    rules=$input
    read -r -p "  Backstage entity namespace [$ENTITY_NAMESPACE]: " input
    ns=$input
  fi
  if [[ -n "$audit" ]]; then
    [[ "$audit" == /* ]] || _die "the audit log path must be absolute: $audit"
    _env_set "$AGENT_ENV" AUDIT_LOG_PATH "$audit"
    _ok "AUDIT_LOG_PATH=$audit"
  fi
  if [[ -n "$rules" ]]; then
    [[ "$rules" == /* ]] || rules="$PWD/$rules"
    [[ -f "$rules" ]] || _warn "$rules does not exist yet"
    _env_set "$AGENT_ENV" RULES_PATH "$rules"
    _ok "RULES_PATH=$rules"
  fi
  if [[ -n "$ns" ]]; then
    [[ "$ns" =~ ^[A-Za-z0-9_-]+$ ]] || _die "the entity namespace must be letters, digits, - or _: $ns"
    _env_set "$AGENT_ENV" ENTITY_NAMESPACE "$ns"
    _ok "ENTITY_NAMESPACE=$ns"
  fi
  _dim "saved in $AGENT_ENV (mode 600); apply with ./$SCRIPT_NAME restart"
}

cmd_configure_scoring() {
  local threshold="" half_life="" retention="" reset=false any=false v input
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --threshold) threshold=${2:?--threshold needs N}; any=true; shift 2 ;;
      --half-life) half_life=${2:?--half-life needs N}; any=true; shift 2 ;;
      --retention) retention=${2:?--retention needs N}; any=true; shift 2 ;;
      --reset) reset=true; any=true; shift ;;
      *) _usage_die "configure scoring: unknown option $1 (use --threshold N, --half-life N, --retention N, --reset)" ;;
    esac
  done
  [[ -d "$BACKEND_DIR" ]] || _die "backend directory not found: $BACKEND_DIR (scoring is a backend setting)"
  local cur_t cur_h cur_r
  cur_t=$(_env_get "$BACKEND_ENV" SCORE_CRITICAL_THRESHOLD)
  cur_h=$(_env_get "$BACKEND_ENV" SCORE_DECAY_HALF_LIFE)
  cur_r=$(_env_get "$BACKEND_ENV" SCORE_RETENTION_DAYS)
  if [[ "$reset" == true ]]; then
    threshold=50 half_life=7 retention=30
  elif [[ "$any" == false ]]; then
    [[ -t 0 ]] || _usage_die "configure scoring is interactive; without a terminal use its flags"
    read -r -p "  Points for score 100 (strict 20, balanced 50, lenient 100) [${cur_t:-50}]: " input
    threshold=$input
    read -r -p "  Days for an event's weight to halve [${cur_h:-7}]: " input
    half_life=$input
    read -r -p "  Days of history that count [${cur_r:-30}]: " input
    retention=$input
  fi
  threshold=${threshold:-${cur_t:-50}}
  half_life=${half_life:-${cur_h:-7}}
  retention=${retention:-${cur_r:-30}}
  for v in "$threshold" "$half_life" "$retention"; do
    [[ "$v" =~ ^[1-9][0-9]{0,5}$ ]] || _die "scoring values are whole numbers from 1 to 999999, got: $v"
  done
  _env_set "$BACKEND_ENV" SCORE_CRITICAL_THRESHOLD "$threshold"
  _env_set "$BACKEND_ENV" SCORE_DECAY_HALF_LIFE "$half_life"
  _env_set "$BACKEND_ENV" SCORE_RETENTION_DAYS "$retention"
  _ok "scoring: threshold=$threshold half-life=${half_life}d retention=${retention}d (in $BACKEND_ENV)"
  _dim "apply with ./$SCRIPT_NAME restart"
}

cmd_start() {
  local target=${1:-all}
  target=${target#--}
  case "$target" in
    all)
      _start_backend
      _start_agent
      ;;
    backend) _start_backend ;;
    agent)
      # An https:// backend is checked through the TLS tunnel by _start_agent.
      if [[ "$HEALERT_BACKEND_URL" != https://* ]] && ! _http_ok "$HEALERT_BACKEND_URL/health" 2; then
        _warn "backend not reachable at $HEALERT_BACKEND_URL; the agent keeps events and retries until it is"
      fi
      _start_agent
      ;;
    kubernetes)
      _kube_ready
      _manifest_sync
      _k8s_ensure_namespace
      local verb
      verb=$(_k8s_apply_secret)
      _ok "Secret healert-api-key: $verb"
      _kubectl apply -f "$DAEMONSET_YAML"
      _kubectl rollout status daemonset/healert-agent -n "$K8S_NS" --timeout=120s ||
        _die "the DaemonSet did not become ready: kubectl -n $K8S_NS describe pods -l app.kubernetes.io/name=healert-agent"
      _ok "DaemonSet healert-agent running in $K8S_NS (control-plane nodes only)"
      ;;
    *) _usage_die "start: unknown target $target (backend | agent | kubernetes)" ;;
  esac
}

# _tls_stop: stop the TLS client, after the agent (which drains its queue through it).
_tls_stop() {
  if _running stunnel >/dev/null; then _stop_process stunnel 5; fi
}

cmd_stop() {
  local target=${1:-all}
  target=${target#--}
  case "$target" in
    all)
      _stop_process agent "$(_grace_seconds)"
      _tls_stop
      _stop_process backend 10
      ;;
    agent)
      _stop_process agent "$(_grace_seconds)"
      _tls_stop
      ;;
    backend) _stop_process backend 10 ;;
    kubernetes)
      _kubectl_resolve || _die "kubectl not found"
      [[ -f "$DAEMONSET_YAML" ]] || _die "not found: $DAEMONSET_YAML"
      # Deleting the manifest deletes the namespace, and with it the Secret.
      _kubectl delete -f "$DAEMONSET_YAML" --ignore-not-found --wait=true --timeout=60s
      _ok "DaemonSet, ConfigMap, NetworkPolicy and namespace $K8S_NS removed"
      _dim "the checkpoint stays on each node in /var/lib/healert-agent"
      ;;
    *) _usage_die "stop: unknown target $target (backend | agent | kubernetes)" ;;
  esac
}

cmd_update() {
  local target=${1:-}
  target=${target#--}
  case "$target" in
    manifest)
      _manifest_sync "${2:-}"
      ;;
    kubernetes)
      _kube_ready
      _manifest_sync
      _kubectl get daemonset healert-agent -n "$K8S_NS" >/dev/null 2>&1 ||
        _die "DaemonSet not found in $K8S_NS: deploy first with ./$SCRIPT_NAME start kubernetes"
      local secret
      secret=$(_k8s_apply_secret)
      _ok "Secret healert-api-key: $secret"
      _kubectl apply -f "$DAEMONSET_YAML"
      # A rules change alters the checksum annotation and rolls the pods by itself; a new key
      # is read from the environment at start, so it needs an explicit restart.
      if [[ "$secret" == "configured" ]]; then
        _kubectl rollout restart daemonset/healert-agent -n "$K8S_NS"
      fi
      _kubectl rollout status daemonset/healert-agent -n "$K8S_NS" --timeout=120s ||
        _die "rollout did not finish: kubectl -n $K8S_NS get pods -o wide"
      _ok "DaemonSet updated"
      ;;
    *) _usage_die "update: unknown target '${target}' (update kubernetes | update manifest [--check])" ;;
  esac
}

cmd_validate() {
  local path=$RULES_PATH rc=0
  case "${1:-}" in
    "") ;;
    --rules) path=${2:?--rules needs a PATH} ;;
    -*) _usage_die "validate: unknown option $1" ;;
    *) path=$1 ;;
  esac
  _agent_bin
  "$AGENT_BIN" validate "$path" || rc=$?
  return "$rc"
}

cmd_restart() {
  local agent_pid="" backend_pid=""
  _run_enter || true
  agent_pid=$(_running agent) || true
  backend_pid=$(_running backend) || true
  if [[ -z "$agent_pid" && -z "$backend_pid" ]]; then
    _warn "nothing is running; start with ./$SCRIPT_NAME start"
    return 0
  fi
  if [[ -n "$agent_pid" ]]; then
    _agent_bin
    if ! "$AGENT_BIN" validate "$RULES_PATH"; then
      _die "restart aborted: $RULES_PATH is invalid (above). The running agent (PID $agent_pid) keeps its current rules."
    fi
  fi
  if [[ -n "$backend_pid" ]]; then
    _stop_process backend 10
    _start_backend
  fi
  if [[ -n "$agent_pid" ]]; then
    _stop_process agent "$(_grace_seconds)"
    _start_agent
  fi
}

cmd_reset() {
  local db answer was_running=false
  [[ "${1:-}" == "" || "${1:-}" == "--confirm" ]] || _usage_die "reset: unknown option $1 (reset [--confirm])"
  [[ -d "$BACKEND_DIR" ]] || _die "backend directory not found: $BACKEND_DIR"
  db=$(_env_get "$BACKEND_ENV" HEALERT_DB)
  db=${db:-$BACKEND_DIR/healert.db}
  [[ "$db" == /* ]] || db="$ORIG_PWD/$db"
  if [[ ! -f "$db" ]]; then
    _info "no database at $db; nothing to reset"
    return 0
  fi
  if [[ "${1:-}" != "--confirm" ]]; then
    [[ -t 0 ]] || _die "reset deletes every recorded event; without a terminal pass --confirm"
    read -r -p "  Delete ALL events and scores in $db? Type 'yes': " answer
    [[ "$answer" == "yes" ]] || {
      _info "cancelled"
      return 0
    }
  fi
  _run_enter || true
  if _running backend >/dev/null; then
    was_running=true
    _stop_process backend 10
  fi
  rm -f "$db" "$db-wal" "$db-shm"
  _ok "deleted $db (rules, .env and the agent's checkpoint are kept)"
  if [[ "$was_running" == true ]]; then _start_backend; fi
}

cmd_status() {
  local pid url key=${HEALERT_API_KEY:-}
  _run_enter || true
  _header "healert status"
  printf '  %-10s' "Agent"
  if pid=$(_running agent); then
    printf '%s● running%s  PID %s\n' "$GREEN" "$RESET" "$pid"
    if url=$(_health_url /readyz); then
      if _http_ok "$url" 2; then _dim "ready: $url"; else _dim "NOT ready: $url (see ./$SCRIPT_NAME logs)"; fi
    fi
  else
    printf '%s● stopped%s\n' "$RED" "$RESET"
  fi
  local source=${AUDIT_SOURCE:-file}
  [[ "$AUDIT_LOG_PATH" != - ]] || source=stdin
  case "$source" in
    webhook)
      _dim "source:     audit webhook on ${AUDIT_WEBHOOK_ADDR:-(AUDIT_WEBHOOK_ADDR not set)}$([[ -n "${AUDIT_WEBHOOK_TOKEN:-}" ]] && echo ' (token set)' || echo ' (NO token)')"
      _dim "spool:      ${SPOOL_PATH:-$RUN_DIR/spool}"
      ;;
    stdin) _dim "source:     stdin (a pipe: docs/cloud.md)" ;;
    *) _dim "audit log:  $AUDIT_LOG_PATH$([[ -r "$AUDIT_LOG_PATH" ]] && echo ' (readable)' || echo ' (NOT readable or missing)')" ;;
  esac
  _dim "rules:      $RULES_PATH"
  _dim "checkpoint: $CHECKPOINT_PATH"
  _dim "log:        $AGENT_LOG"
  printf '  %-10s' "Backend"
  if pid=$(_running backend); then
    printf '%s● running%s  PID %s  %s\n' "$GREEN" "$RESET" "$pid" "$(_backend_url)"
  else
    printf '%s● stopped%s\n' "$DIM" "$RESET"
  fi
  if [[ "$HEALERT_BACKEND_URL" == https://* ]]; then
    _tls_status
    url=${HEALERT_BACKEND_URL#https://}
    [[ "$url" == */* ]] && url="/${url#*/}" || url=""
    url="http://127.0.0.1:${HEALERT_TLS_LOCAL_PORT:-$DEFAULT_TLS_LOCAL_PORT}${url%/}"
    _dim "agent sends to $HEALERT_BACKEND_URL through $url$(_http_ok "$url/health" 2 && echo ' (reachable)' || echo ' (not reachable)')"
  else
    _dim "agent sends to $HEALERT_BACKEND_URL$(_http_ok "$HEALERT_BACKEND_URL/health" 2 && echo ' (reachable)' || echo ' (not reachable)')"
  fi
  printf '  %-10s' "API key"
  if [[ -n "$key" ]]; then printf '%s● set%s (%s chars)\n' "$GREEN" "$RESET" "${#key}"; else printf '%s● not set%s  (./%s setup)\n' "$AMBER" "$RESET" "$SCRIPT_NAME"; fi
  if [[ -f "$AGENT_ENV" ]]; then
    _dim "config: $AGENT_ENV (mode $(stat -c '%a' "$AGENT_ENV" 2>/dev/null || stat -f '%Lp' "$AGENT_ENV"))"
  else
    _dim "config: $AGENT_ENV not created yet (./$SCRIPT_NAME setup)"
  fi
  if _kubectl_resolve && _kubectl get daemonset healert-agent -n "$K8S_NS" --request-timeout=3s >/dev/null 2>&1; then
    printf '  %-10s%s● deployed%s  ready %s/%s in %s\n' "DaemonSet" "$GREEN" "$RESET" \
      "$(_kubectl get daemonset healert-agent -n "$K8S_NS" -o jsonpath='{.status.numberReady}' 2>/dev/null)" \
      "$(_kubectl get daemonset healert-agent -n "$K8S_NS" -o jsonpath='{.status.desiredNumberScheduled}' 2>/dev/null)" "$K8S_NS"
  fi
  echo
}

cmd_logs() {
  local files=()
  case "${1:-all}" in
    all)
      [[ -f "$AGENT_LOG" ]] && files+=("$AGENT_LOG")
      [[ -f "$BACKEND_LOG" ]] && files+=("$BACKEND_LOG")
      ;;
    agent) [[ -f "$AGENT_LOG" ]] && files+=("$AGENT_LOG") ;;
    backend) [[ -f "$BACKEND_LOG" ]] && files+=("$BACKEND_LOG") ;;
    *) _usage_die "logs: unknown target $1 (agent | backend)" ;;
  esac
  ((${#files[@]} > 0)) || _die "no log files in $RUN_DIR yet; start something first (./$SCRIPT_NAME start)"
  _info "following ${files[*]} (Ctrl-C to stop)"
  exec tail -n 50 -F "${files[@]}"
}

# cmd_test: the real pipeline. A synthetic `kubectl exec` audit line goes through the agent's
# own rules and delivery (`healert-agent replay --send`), then the backend is asked for the
# entity's friction to confirm it stored the event. The pod is named healert-selftest (no
# digit-bearing suffix, so workload-name stripping leaves it intact); the unique token is in the
# actor and the audit ID, so this run's event is told apart from earlier ones.
#
# It always ends: one deadline (HEALERT_TEST_TIMEOUT seconds, default 30) covers every step, and
# each network call takes at most what is left of it. The agent keeps retrying a backend that
# refuses its key or cannot be reached (that is its job), so the test shows the agent's log lines
# as they come and stops it: at once on a 401/403 or on a refused connection to a backend whose
# /health did not answer either, otherwise at the deadline, naming the agent's last reason.
cmd_test() {
  local tmp token uuid ts line events entity before after found=false hdr timeout backend_up=false
  local shown n l last="" running rc=0 refused
  timeout=${HEALERT_TEST_TIMEOUT:-30}
  [[ "$timeout" =~ ^[1-9][0-9]{0,3}$ ]] ||
    _die "HEALERT_TEST_TIMEOUT=\"$timeout\": must be a whole number of seconds from 1 to 9999 (example: HEALERT_TEST_TIMEOUT=30)"
  _agent_bin
  TEST_DEADLINE=$((SECONDS + timeout))
  _header "Pipeline test: audit line → agent rules → POST /events → backend (gives up after ${timeout}s)"
  "$AGENT_BIN" test --rules "$RULES_PATH" || _die "the rules' fixtures fail (above): fix $RULES_PATH or its fixtures (healert-agent explain shows every decision)"
  if _http_ok "$HEALERT_BACKEND_URL/health" "$(_test_left 3)"; then
    backend_up=true
    _ok "backend reachable at $HEALERT_BACKEND_URL"
  else
    _warn "no answer from $HEALERT_BACKEND_URL/health; trying the pipeline anyway"
  fi
  SELFTEST_TMP=$(mktemp -d)
  trap _test_cleanup EXIT
  tmp=$SELFTEST_TMP
  token=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  if [[ -r /proc/sys/kernel/random/uuid ]]; then
    uuid=$(cat /proc/sys/kernel/random/uuid)
  else
    uuid="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')-0000-4000-8000-$token"
  fi
  # Now, not a fixed date: the backend's friction view only counts the last 30 days
  # (HEALERT_RETENTION_DAYS) and deletes older events when it starts.
  ts=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
  line='{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"%s","stage":"ResponseComplete",'
  line+='"requestURI":"/api/v1/namespaces/default/pods/%s/exec?command=sh&container=app&stdin=true&stdout=true&tty=true",'
  line+='"verb":"create","user":{"username":"selftest-%s@healert.local","groups":["system:authenticated"]},'
  line+='"sourceIPs":["127.0.0.1"],"userAgent":"healert.sh-selftest",'
  line+='"objectRef":{"resource":"pods","namespace":"default","name":"%s","apiVersion":"v1","subresource":"exec"},'
  line+='"responseStatus":{"metadata":{},"code":101},"requestReceivedTimestamp":"%s","stageTimestamp":"%s",'
  line+='"annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"healert.sh test"}}\n'
  # shellcheck disable=SC2059 # the format is ours; every value is a %s argument
  printf "$line" "$uuid" "$SELFTEST_WORKLOAD" "$token" "$SELFTEST_WORKLOAD" "$ts" "$ts" >"$tmp/audit.ndjson"

  # 1. The agent's rules must turn the line into an event (dry run: nothing is sent).
  if ! events=$("$AGENT_BIN" replay --rules "$RULES_PATH" "$tmp/audit.ndjson" 2>"$tmp/replay.err"); then
    cat "$tmp/replay.err" >&2
    _die "healert-agent replay failed (above)"
  fi
  entity=$(printf '%s\n' "$events" | grep -o '"entity_ref":"[^"]*"' | head -n 1 | cut -d'"' -f4)
  [[ -n "$entity" ]] || _die "the rules in $RULES_PATH produce no event for a kubectl exec by a human in namespace default: enable the kubectl-exec rule (rules.yaml) and try again"
  _ok "rules matched: $(printf '%s\n' "$events" | grep -o '"type":"[^"]*"' | head -n 1 | cut -d'"' -f4) → $entity"

  # 2. What the backend holds for the entity before.
  hdr="$tmp/auth"
  printf 'Authorization: Bearer %s\n' "${HEALERT_API_KEY:-}" >"$hdr"
  before=$(curl --silent --max-time "$(_test_left 5)" -H @"$hdr" "$HEALERT_BACKEND_URL/friction/$entity" 2>/dev/null || true)

  # 3. Deliver through the agent's own delivery path, its log lines shown as they come.
  _info "sending through healert-agent replay --send; the agent's log:"
  : >"$tmp/send.err"
  LOG_FORMAT=text "$AGENT_BIN" replay --rules "$RULES_PATH" --send "$tmp/audit.ndjson" >/dev/null 2>>"$tmp/send.err" &
  SELFTEST_PID=$!
  shown=0
  while :; do
    running=true
    kill -0 "$SELFTEST_PID" 2>/dev/null || running=false
    n=$(wc -l <"$tmp/send.err" | tr -d ' ')
    if ((n > shown)); then
      while IFS= read -r l; do
        # The agent's log lines (timestamped); the replay summary is read below.
        [[ "$l" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]] || continue
        printf '        agent: %s\n' "$l"
        if [[ "$l" == *" WARN "* || "$l" == *" ERROR "* ]]; then last=$l; fi
      done < <(sed -n "$((shown + 1)),${n}p" "$tmp/send.err")
      shown=$n
    fi
    if [[ "$last" =~ backend\ answered\ (401|403) ]]; then
      _test_stop_sender
      if [[ -z "${HEALERT_API_KEY:-}" ]]; then
        _die "the backend requires an API key (${BASH_REMATCH[1]}) and HEALERT_API_KEY is not set. Fix: ./$SCRIPT_NAME setup, then ./$SCRIPT_NAME restart"
      fi
      _die "the backend refused the API key (${BASH_REMATCH[1]}). Fix: ./$SCRIPT_NAME setup rotate, then ./$SCRIPT_NAME restart (backend and agent get the same key)"
    fi
    if [[ "$backend_up" == false && "$last" == *"cannot connect"* ]]; then
      _test_stop_sender
      _die "the backend is not reachable at $HEALERT_BACKEND_URL (agent: ${last#* why=}). Fix: ./$SCRIPT_NAME start backend, or set HEALERT_BACKEND_URL"
    fi
    if [[ "$running" == false ]]; then
      wait "$SELFTEST_PID" || rc=$?
      SELFTEST_PID=""
      break
    fi
    if ((SECONDS >= TEST_DEADLINE)); then
      _test_stop_sender
      _die "the event was not delivered within ${timeout}s (HEALERT_TEST_TIMEOUT); the agent's last word: ${last:-none (no answer from $HEALERT_BACKEND_URL)}"
    fi
    sleep 0.2
  done
  if ((rc != 0)); then
    grep -v '^[0-9]\{4\}-' "$tmp/send.err" >&2 || true
    _die "healert-agent replay --send failed (exit $rc, above)"
  fi
  refused=$(grep -o '[0-9][0-9]* refused (dead-lettered)' "$tmp/send.err" | head -n 1 | cut -d' ' -f1 || true)
  if [[ -n "$refused" && "$refused" != 0 ]]; then
    _die "the backend refused the event for good (${last:-no reason given}); it will never accept this payload, so nothing was stored"
  fi
  _ok "event delivered (healert-agent replay --send)"

  # 4. The backend must now show it: our token, or a larger count than before.
  while :; do
    after=$(curl --silent --max-time "$(_test_left 5)" -H @"$hdr" "$HEALERT_BACKEND_URL/friction/$entity" 2>/dev/null || true)
    if [[ "$after" == *"$token"* || "$after" == *"$uuid"* ]]; then
      found=true
      break
    fi
    if [[ -n "$after" && "$after" != "$before" && "$(_count "$after")" -gt "$(_count "$before")" ]]; then
      found=true
      break
    fi
    ((SECONDS < TEST_DEADLINE)) || break
    sleep 0.5
  done
  [[ "$found" == true ]] ||
    _die "delivered, but GET $HEALERT_BACKEND_URL/friction/$entity does not show it within ${timeout}s (backend log: $BACKEND_LOG)"
  _ok "backend stored it: GET /friction/$entity shows actor selftest-$token@healert.local"
  _dim "this test leaves its events (actor selftest-$token@healert.local) for $entity in the backend, timestamped now: the backend keeps them HEALERT_RETENTION_DAYS (30 by default)"
}

# _test_left CAP: seconds left before cmd_test's deadline, at most CAP and at least 1 (for
# curl --max-time).
_test_left() {
  local left=$((TEST_DEADLINE - SECONDS))
  ((left <= $1)) || left=$1
  ((left >= 1)) || left=1
  printf '%s' "$left"
}

# _test_stop_sender: end cmd_test's `replay --send` at once (it holds nothing worth a grace:
# the audit line is a temporary file).
_test_stop_sender() {
  if [[ -n "$SELFTEST_PID" ]]; then
    kill -KILL "$SELFTEST_PID" 2>/dev/null || true
    wait "$SELFTEST_PID" 2>/dev/null || true
    SELFTEST_PID=""
  fi
}

_test_cleanup() {
  _test_stop_sender
  [[ -z "$SELFTEST_TMP" ]] || rm -rf "$SELFTEST_TMP"
}

# _count JSON: the backend's count for an entity (bypassCount, else the number of "type" keys).
_count() {
  local n
  n=$(printf '%s' "$1" | grep -o '"bypassCount": *[0-9]*' | head -n 1 | grep -o '[0-9]*$' || true)
  if [[ -z "$n" ]]; then n=$(printf '%s' "$1" | grep -o '"type":' | wc -l | tr -d ' '); fi
  printf '%s' "${n:-0}"
}

cmd_version() {
  printf 'healert.sh %s\n' "$SCRIPT_VERSION"
  local bin=${HEALERT_AGENT_BIN:-$SCRIPT_DIR/target/release/healert-agent}
  if [[ -x "$bin" ]]; then "$bin" version; else printf 'healert-agent: not built yet (./%s validate builds it)\n' "$SCRIPT_NAME"; fi
}

cmd_help() {
  cat <<EOF
healert.sh $SCRIPT_VERSION — run healert-agent locally or as a DaemonSet; manage the Healert backend.

Usage: ./$SCRIPT_NAME <command> [options]

Setup
  init [--backend-dir PATH --agent-dir PATH]   where the backend and the agent live (~/.healert-config)
  deps [--install]                  check tools; --install creates the backend's venv
  setup                             generate the API key into .env files (mode 600) and the K8s Secret
  setup rotate                      replace the API key
  configure [--audit-log PATH] [--rules PATH] [--namespace NS]   agent settings in .env
  configure scoring [--threshold N] [--half-life N] [--retention N] [--reset]   backend scoring

Run
  start [backend|agent|kubernetes]  start both local processes, or one, or deploy the DaemonSet
  stop [backend|agent|kubernetes]   stop them (kubernetes: delete everything daemonset.yaml created)
  update kubernetes                 copy rules.yaml into daemonset.yaml, apply, roll the pods
  update manifest [--check]         only copy rules.yaml into daemonset.yaml (--check: verify)
  restart                           validate the rules, then restart what runs; invalid rules
                                    leave the running processes untouched
  validate [PATH|--rules PATH]      check a rules file with the agent's own parser
  reset [--confirm]                 delete the backend's database
  status                            processes, health, key length, configuration
  logs [agent|backend]              follow the logs
  test                              send a synthetic kubectl exec through the agent; confirm the
                                    backend stored it (gives up after HEALERT_TEST_TIMEOUT, 30 s)
  version | help

Files: $AGENT_DIR/.env (agent settings and API key, mode 600; see .env.example),
       $RUN_DIR/ (pid files, logs, checkpoint), $BACKEND_DIR/.env (backend).
Script variables: HEALERT_AGENT_DIR, HEALERT_BACKEND_DIR, HEALERT_HOST, HEALERT_PORT (backend bind,
and the agent's default HEALERT_BACKEND_URL), HEALERT_AGENT_BIN (use this binary, no cargo build),
KUBECTL (e.g. 'sudo k3s kubectl'), HEALERT_RULES_SOURCE (update manifest input, default rules.yaml),
HEALERT_TEST_TIMEOUT (seconds \`test\` may take, default 30). Docs: docs/local-mode.md.
An https:// HEALERT_BACKEND_URL runs a local stunnel TLS client (docs/tls.md): HEALERT_TLS_CA
(default: the system CA bundle), HEALERT_TLS_CERT + HEALERT_TLS_KEY (client certificate),
HEALERT_TLS_LOCAL_PORT (default 18000), HEALERT_STUNNEL (default: stunnel in PATH).
Environment variables override .env. The API key is never printed, only its length.
EOF
}

main() {
  local cmd=${1:-help}
  [[ $# -gt 0 ]] && shift
  _load_dirs
  case "$cmd" in
    help | -h | --help) cmd_help; return ;;
    version | --version) cmd_version; return ;;
    init) cmd_init "$@"; return ;;
  esac
  _load_agent_config
  case "$cmd" in
    deps) cmd_deps "$@" ;;
    setup) cmd_setup "$@" ;;
    configure) cmd_configure "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    update) cmd_update "$@" ;;
    restart) cmd_restart ;;
    validate) cmd_validate "$@" ;;
    reset) cmd_reset "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    test) cmd_test ;;
    *) _usage_die "unknown command: $cmd" ;;
  esac
}

main "$@"
