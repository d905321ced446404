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
  HEALTH_ADDR
  LOG_FORMAT
  LOG_LEVEL
  HEALERT_MODE
)
# Variables only this script reads (documented in `help` and the README).
SCRIPT_VARS=(HEALERT_HOST HEALERT_PORT HEALERT_AGENT_BIN KUBECTL HEALERT_RULES_SOURCE)

readonly DEFAULT_AUDIT_LOG="/var/log/kubernetes/audit/audit.log"
readonly SELFTEST_WORKLOAD="healert-selftest"
# The namespace daemonset.yaml deploys into (its Secret is created there too).
readonly K8S_NS="healert-system"
# cmd_test's scratch directory, global so the EXIT trap still sees it after the function returns.
SELFTEST_TMP=""

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
  RUN_DIR="$AGENT_DIR/run"
  AGENT_ENV="$AGENT_DIR/.env"
  BACKEND_ENV="$BACKEND_DIR/.env"
  AGENT_PIDFILE="$RUN_DIR/agent.pid"
  AGENT_LOG="$RUN_DIR/agent.log"
  BACKEND_PIDFILE="$RUN_DIR/backend.pid"
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
  export ENTITY_NAMESPACE=${ENTITY_NAMESPACE:-default}
  # The DaemonSet's namespace: excluded from detection in local mode too.
  export K8S_NAMESPACE=${K8S_NAMESPACE:-healert-system}
  # Local mode keeps a checkpoint so a restart neither loses nor repeats events.
  export CHECKPOINT_PATH=${CHECKPOINT_PATH:-$RUN_DIR/checkpoint}
  # A refused key is then reported with the local fix (.env, ./healert.sh restart agent).
  export HEALERT_MODE=${HEALERT_MODE:-local}
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
# Processes: pid files under run/, stale ones detected and removed
# =============================================================================

# _cmdline PID: the command line of PID, or nothing when it does not exist.
_cmdline() {
  if [[ -r "/proc/$1/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else
    ps -p "$1" -o args= 2>/dev/null || true
  fi
}

# _running NAME: print the pid of our running NAME (agent|backend). A pid file whose process
# is gone, or whose pid now belongs to another program, is stale: reported and removed.
_running() {
  local name=$1 file pid cmd pattern
  file="$RUN_DIR/$name.pid"
  [[ -f "$file" ]] || return 1
  pid=$(head -c 32 "$file" | tr -dc '0-9')
  case "$name" in
    agent) pattern="healert-agent" ;;
    backend) pattern="uvicorn" ;;
  esac
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    cmd=$(_cmdline "$pid")
    if [[ "$cmd" == *"$pattern"* ]]; then
      printf '%s\n' "$pid"
      return 0
    fi
  fi
  _warn "stale pid file $file (process ${pid:-?} is not a running $name); removed"
  rm -f "$file"
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

# _stop_process NAME SECONDS: SIGTERM, wait, then SIGKILL.
_stop_process() {
  local name=$1 wait_s=$2 pid i
  if ! pid=$(_running "$name"); then
    _dim "$name is not running"
    return 0
  fi
  _info "Stopping $name (PID $pid; SIGTERM, up to ${wait_s}s)..."
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    _warn "$name did not stop within ${wait_s}s; killed (the agent re-reads unacknowledged lines from its checkpoint)"
  fi
  rm -f "$RUN_DIR/$name.pid"
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
# Agent (local mode)
# =============================================================================

# _check_audit_log: say exactly what is wrong with the audit log before starting.
_check_audit_log() {
  local log=$AUDIT_LOG_PATH dir
  dir=$(dirname "$log")
  if [[ -e "$log" && ! -r "$log" ]]; then
    _die "cannot read $log (permission denied). Fix: put yourself in the group that owns it, e.g.
        sudo usermod -aG healert-audit \"\$USER\"   (then log in again)
      See README → Audit log permissions. Or: ./$SCRIPT_NAME configure --audit-log PATH"
  fi
  if [[ ! -e "$log" ]]; then
    if [[ -d "$dir" && ! -x "$dir" ]]; then
      _die "cannot enter $dir (permission denied): the directory needs g+rx for your group (README → Audit log permissions)"
    fi
    _warn "$log does not exist yet; the agent waits for it (is audit logging enabled? README → Audit logging)"
  fi
}

_start_agent() {
  local pid i ready url
  if pid=$(_running agent); then
    _warn "agent already running (PID $pid)"
    return 0
  fi
  _agent_bin
  [[ -f "$RULES_PATH" ]] || _die "rules file not found: $RULES_PATH. Fix: ./$SCRIPT_NAME configure --rules PATH"
  local out
  if ! out=$("$AGENT_BIN" validate "$RULES_PATH" 2>&1); then
    printf '%s\n' "$out" >&2
    _die "rules are invalid (above); the agent was not started"
  fi
  _check_audit_log
  if [[ -z "${HEALERT_API_KEY:-}" ]]; then
    _warn "HEALERT_API_KEY is not set: a backend with auth enabled answers 401. Fix: ./$SCRIPT_NAME setup"
  fi
  mkdir -p "$RUN_DIR"
  chmod 700 "$RUN_DIR"
  : >>"$AGENT_LOG"
  chmod 600 "$AGENT_LOG"
  # stdin/stdout/stderr are redirected so nothing inherits our terminal or pipes; nohup keeps
  # the agent alive when the terminal closes (the agent installs its own SIGHUP handler).
  nohup "$AGENT_BIN" run </dev/null >>"$AGENT_LOG" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$AGENT_PIDFILE"
  for ((i = 0; i < 10; i++)); do
    sleep 0.2
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$AGENT_PIDFILE"
      _err "the agent exited at start; last lines of $AGENT_LOG:"
      tail -n 20 "$AGENT_LOG" >&2 || true
      exit 1
    fi
  done
  _ok "agent started (PID $pid)"
  _dim "log:        $AGENT_LOG"
  _dim "audit log:  $AUDIT_LOG_PATH"
  _dim "rules:      $RULES_PATH"
  _dim "backend:    $HEALERT_BACKEND_URL"
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

_start_backend() {
  local pid uvicorn i url
  if pid=$(_running backend); then
    _warn "backend already running (PID $pid)"
    return 0
  fi
  [[ -d "$BACKEND_DIR" ]] || _die "backend directory not found: $BACKEND_DIR. Fix: export HEALERT_BACKEND_DIR=/path/to/backend (or ./$SCRIPT_NAME init)"
  [[ -f "$BACKEND_DIR/main.py" ]] || _die "main.py not found in $BACKEND_DIR: is HEALERT_BACKEND_DIR the backend checkout?"
  uvicorn=$(_find_uvicorn) || _die "uvicorn not found. Fix: ./$SCRIPT_NAME deps --install"
  url=$(_backend_url)
  mkdir -p "$RUN_DIR"
  chmod 700 "$RUN_DIR"
  : >>"$BACKEND_LOG"
  chmod 600 "$BACKEND_LOG"
  (
    # The backend's own settings (its key, scoring, database) come from its .env, in a
    # subshell so they do not leak into the agent's environment.
    _env_load "$BACKEND_ENV" "*"
    export HEALERT_DB=${HEALERT_DB:-$BACKEND_DIR/healert.db}
    exec nohup "$uvicorn" main:app --app-dir "$BACKEND_DIR" --host "${HEALERT_HOST:-127.0.0.1}" \
      --port "${HEALERT_PORT:-8000}" --log-level info </dev/null >>"$BACKEND_LOG" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$BACKEND_PIDFILE"
  _info "backend starting (PID $pid); waiting for $url/health ..."
  for ((i = 0; i < 20; i++)); do
    if _http_ok "$url/health" 2; then
      _ok "backend healthy at $url"
      if [[ -z "$(_env_get "$BACKEND_ENV" HEALERT_API_KEY)" ]]; then
        _warn "the backend has no HEALERT_API_KEY in $BACKEND_ENV. Fix: ./$SCRIPT_NAME setup"
      fi
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  _err "backend did not become healthy within 10 s; last lines of $BACKEND_LOG:"
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

# _manifest_sync [--check]: copy rules.yaml into the ConfigMap block of daemonset.yaml
# (between the BEGIN/END markers) and its SHA-256 into the pod template annotation, so a
# rules change rolls the pods. With --check only report whether daemonset.yaml is current.
_manifest_sync() {
  local check=${1:-} src=${HEALERT_RULES_SOURCE:-$SCRIPT_DIR/rules.yaml} sum tmp bad
  [[ -f "$src" ]] || _die "rules source not found: $src (set HEALERT_RULES_SOURCE)"
  [[ -f "$DAEMONSET_YAML" ]] || _die "not found: $DAEMONSET_YAML"
  # A YAML literal block (|) reproduces the file exactly only if: the first line is not
  # indented, no line is whitespace only, and the file ends in exactly one newline.
  bad=$(awk 'NR==1 && /^[ \t]/ {print "line 1 starts with whitespace"; exit}
             /^[ \t]+$/ {print "line " NR " has only whitespace"; exit}' "$src")
  [[ -z "$bad" ]] || _die "$src: $bad; remove it so the ConfigMap copy is exact"
  if [[ -s "$src" ]]; then
    [[ "$(tail -c 1 "$src" | od -An -c | tr -d ' ')" == '\n' ]] || _die "$src: add a newline at the end of the file"
    [[ "$(tail -c 2 "$src" | od -An -c | tr -d ' ')" != '\n\n' ]] || _die "$src: remove the empty lines at the end of the file"
  fi
  [[ $(grep -c '^  # BEGIN rules.yaml' "$DAEMONSET_YAML") == 1 && $(grep -c '^  # END rules.yaml' "$DAEMONSET_YAML") == 1 ]] ||
    _die "$DAEMONSET_YAML: expected one '  # BEGIN rules.yaml' and one '  # END rules.yaml' marker line"
  sum=$(sha256sum <"$src" | cut -c1-64)
  tmp=$(mktemp "$SCRIPT_DIR/.daemonset.XXXXXX")
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
    { print }' "$DAEMONSET_YAML" >"$tmp"
  if [[ "$check" == "--check" ]]; then
    if cmp -s "$tmp" "$DAEMONSET_YAML"; then
      rm -f "$tmp"
      _ok "daemonset.yaml carries $src (sha256 $sum)"
      return 0
    fi
    rm -f "$tmp"
    _die "daemonset.yaml is out of date with $src. Fix: ./$SCRIPT_NAME update manifest"
  fi
  chmod 644 "$tmp"
  if cmp -s "$tmp" "$DAEMONSET_YAML"; then
    rm -f "$tmp"
    _ok "daemonset.yaml already carries $src (sha256 $sum)"
  else
    mv -f "$tmp" "$DAEMONSET_YAML"
    _ok "daemonset.yaml updated from $src (sha256 $sum)"
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
      if ! _http_ok "$HEALERT_BACKEND_URL/health" 2; then
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

cmd_stop() {
  local target=${1:-all}
  target=${target#--}
  case "$target" in
    all)
      _stop_process agent "$(_grace_seconds)"
      _stop_process backend 10
      ;;
    agent) _stop_process agent "$(_grace_seconds)" ;;
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
  _dim "audit log:  $AUDIT_LOG_PATH$([[ -r "$AUDIT_LOG_PATH" ]] && echo ' (readable)' || echo ' (NOT readable or missing)')"
  _dim "rules:      $RULES_PATH"
  _dim "checkpoint: $CHECKPOINT_PATH"
  _dim "log:        $AGENT_LOG"
  printf '  %-10s' "Backend"
  if pid=$(_running backend); then
    printf '%s● running%s  PID %s  %s\n' "$GREEN" "$RESET" "$pid" "$(_backend_url)"
  else
    printf '%s● stopped%s\n' "$DIM" "$RESET"
  fi
  _dim "agent sends to $HEALERT_BACKEND_URL$(_http_ok "$HEALERT_BACKEND_URL/health" 2 && echo ' (reachable)' || echo ' (not reachable)')"
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
cmd_test() {
  local tmp token uuid ts line events entity before after i found=false hdr
  _agent_bin
  _header "Pipeline test: audit line → agent rules → POST /events → backend"
  if _http_ok "$HEALERT_BACKEND_URL/health" 3; then
    _ok "backend reachable at $HEALERT_BACKEND_URL"
  else
    _warn "no answer from $HEALERT_BACKEND_URL/health; trying the pipeline anyway"
  fi
  SELFTEST_TMP=$(mktemp -d)
  trap 'rm -rf "$SELFTEST_TMP"' EXIT
  tmp=$SELFTEST_TMP
  token=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  if [[ -r /proc/sys/kernel/random/uuid ]]; then
    uuid=$(cat /proc/sys/kernel/random/uuid)
  else
    uuid="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')-0000-4000-8000-$token"
  fi
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
  before=$(curl --silent --max-time 5 -H @"$hdr" "$HEALERT_BACKEND_URL/friction/$entity" 2>/dev/null || true)

  # 3. Deliver through the agent's own delivery path.
  if ! "$AGENT_BIN" replay --rules "$RULES_PATH" --send "$tmp/audit.ndjson" >/dev/null 2>"$tmp/send.err"; then
    cat "$tmp/send.err" >&2
    if grep -q '401' "$tmp/send.err"; then
      _die "the backend refused the API key (401). Fix: ./$SCRIPT_NAME setup rotate, then ./$SCRIPT_NAME restart (backend and agent get the same key)"
    fi
    _die "healert-agent replay --send failed (above)"
  fi
  _ok "event delivered (healert-agent replay --send)"

  # 4. The backend must now show it: our token, or a larger count than before.
  for ((i = 0; i < 20; i++)); do
    after=$(curl --silent --max-time 5 -H @"$hdr" "$HEALERT_BACKEND_URL/friction/$entity" 2>/dev/null || true)
    if [[ "$after" == *"$token"* || "$after" == *"$uuid"* ]]; then
      found=true
      break
    fi
    if [[ -n "$after" && "$after" != "$before" && "$(_count "$after")" -gt "$(_count "$before")" ]]; then
      found=true
      break
    fi
    sleep 0.5
  done
  [[ "$found" == true ]] ||
    _die "delivered, but GET $HEALERT_BACKEND_URL/friction/$entity does not show it after 10 s (backend log: $BACKEND_LOG)"
  _ok "backend stored it: GET /friction/$entity shows actor selftest-$token@healert.local"
  _dim "this test leaves one event for entity $entity in the backend"
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
                                    backend stored it
  version | help

Files: $AGENT_DIR/.env (agent settings and API key, mode 600; see .env.example),
       $RUN_DIR/ (pid files, logs, checkpoint), $BACKEND_DIR/.env (backend).
Script variables: HEALERT_AGENT_DIR, HEALERT_BACKEND_DIR, HEALERT_HOST, HEALERT_PORT (backend bind,
and the agent's default HEALERT_BACKEND_URL), HEALERT_AGENT_BIN (use this binary, no cargo build),
KUBECTL (e.g. 'sudo k3s kubectl'), HEALERT_RULES_SOURCE (update manifest input, default rules.yaml).
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
