# What the tpu_setup scripts share: the settings, printing and running
# commands, and running one command on every worker of a TPU.
#
# Sourced, not run: `source "$(dirname "$0")/common.sh"`. Bash 3.2 (macOS's)
# is enough, so no associative arrays, no mapfile, and no empty arrays.

TPU_SETUP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$TPU_SETUP_DIR")
# On each worker the project lives in ~/attention_research, its venv in .venv.
REMOTE_DIR=attention_research
REQUIRED_SETTINGS="PROJECT ZONE ACCELERATOR_TYPE RUNTIME_VERSION BUCKET TPU_NAME"
OPTIONAL_SETTINGS="POLL_SECONDS CREATE_TIMEOUT_SECONDS LOG_DIR STATE_DIR"
DRY_RUN=0
SETTINGS=""  # --settings FILE; else $TPU_SETTINGS; else tpu_setup/settings.env

die() {  # die STATUS MESSAGE: the message on one line, and exit
  echo "error: $2" >&2
  exit "$1"
}

usage() {  # --help: the script's opening comment block
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"
}

load_settings() {
  local file=${SETTINGS:-${TPU_SETTINGS:-$TPU_SETUP_DIR/settings.env}} name missing=""
  [[ -f $file ]] || die 2 "no settings file $file: copy tpu_setup/settings.example there and \
fill it in, or pass --settings FILE"
  # Only the file counts: a ZONE left in the shell must not stand in for a missing one.
  for name in $REQUIRED_SETTINGS $OPTIONAL_SETTINGS; do unset "$name"; done
  # shellcheck source=/dev/null
  source "$file"
  for name in $REQUIRED_SETTINGS; do
    [[ -n ${!name:-} ]] || missing="$missing $name"
  done
  [[ -z $missing ]] || die 2 "$file: missing setting(s):$missing (see tpu_setup/settings.example)"
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  POLL_SECONDS=${POLL_SECONDS:-30}
  CREATE_TIMEOUT_SECONDS=${CREATE_TIMEOUT_SECONDS:-3600}
  for name in POLL_SECONDS CREATE_TIMEOUT_SECONDS; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die 2 "$file: $name=${!name} is not a whole number of seconds"
  done
  LOG_DIR=${LOG_DIR:-$TPU_SETUP_DIR/logs}
  STATE_DIR=${STATE_DIR:-$TPU_SETUP_DIR/state}
  LOGS=$LOG_DIR/$TPU_NAME             # <script>-worker-<i>.log, one per worker
  RECORD=$STATE_DIR/$TPU_NAME.created # written by create, read and removed by delete
  # Every call names the project and zone: gcloud's defaults may point elsewhere.
  WHERE=(--project="$PROJECT" --zone="$ZONE")
}

quoted() {  # the arguments as one line that a shell reads back as the same words
  local out="" arg sq="'" esc="'\\''"
  local safe='^[A-Za-z0-9_./:=@%+,-]+$' flag='^(--[A-Za-z0-9_-]+=)(.*)$'
  for arg in "$@"; do
    if [[ $arg =~ $safe ]]; then
      out="$out $arg"
    elif [[ $arg =~ $flag ]]; then  # --command='...' reads better than '--command=...'
      out="$out ${BASH_REMATCH[1]}'${BASH_REMATCH[2]//$sq/$esc}'"
    else
      out="$out '${arg//$sq/$esc}'"
    fi
  done
  echo "${out# }"
}

words() {  # how many arguments
  echo $#
}

run_cmd() {  # prints the command as `+ ...`, then runs it unless --dry_run
  echo "+ $(quoted "$@")"
  if ((DRY_RUN)); then return 0; fi
  "$@"
}

capture() {  # capture VAR COMMAND...: run_cmd, with the command's output (trimmed) in VAR
  local var=$1 out=""
  shift
  echo "+ $(quoted "$@")"
  if ((!DRY_RUN)); then out=$("$@"); fi
  printf -v "$var" '%s' "$out"
}

count_workers() {  # sets WORKERS: the TPU's hosts, one network endpoint each
  # Asked of the TPU, not read off the accelerator's name: chips per host
  # differ by generation (v4-8: 1 host; v5litepod-16: 2; v5litepod-8: 1).
  capture WORKERS gcloud compute tpus tpu-vm describe "$TPU_NAME" "${WHERE[@]}" \
    --format='value(networkEndpoints.len())'
  if ((DRY_RUN)); then WORKERS=N; return 0; fi
  [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die 1 "$TPU_NAME lists no workers (${WORKERS:-none}): is it \
READY? (tpu_setup/create waits for it)"
}

wait_for() {  # wait_for PID: until background job PID has ended, through a trapped Ctrl-C
  # Its status is not taken from `wait`: a trapped signal cuts `wait` short
  # with 130, and a job that ends about then may leave bash no status at all
  # (it reads as 255). The job writes its own status to a file instead.
  local rc
  while kill -0 "$1" 2>/dev/null; do
    rc=0
    wait "$1" || rc=$?
    if ((rc == 127)); then return 0; fi  # not our child (any more)
  done
}

# on_workers WHAT COMMAND: COMMAND on all WORKERS at once, each worker's output
# in $LOGS/WHAT-worker-<i>.log (appended, under a dated header); sets FAILED to
# the failed workers' exit statuses ("" when none failed), after a line on
# stderr for each.
# One `ssh --worker=<i>` per worker in the background, not one `--worker=all`:
# that merges the hosts' output and exits with one status, and a failure must
# say which host it was and where its log is. With STREAM=1, worker 0's output
# is also shown as it comes (our binaries print from process 0 alone).
on_workers() {
  local what=$1 command=$2 i pid pids="" log rc starts=""
  FAILED=""
  if ((DRY_RUN)); then
    echo "+ $(quoted gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=W \
      --command="$command") >> $(quoted "$LOGS/$what-worker-W.log")"
    echo "  (at once on each worker W = 0 ... N-1, N the endpoints describe lists)"
    return 0
  fi
  mkdir -p "$LOGS"
  for ((i = 0; i < WORKERS; i++)); do
    log=$LOGS/$what-worker-$i.log
    echo "+ $(quoted gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker="$i" \
      --command="$command") >> $(quoted "$log")"
    echo "==== $(date -u '+%Y-%m-%d %H:%M:%S UTC'): $what on worker $i of $WORKERS" >>"$log"
    starts="$starts $(wc -l <"$log")"  # where this call's lines begin
    rm -f "$log.status"
    # The ssh clients ignore Ctrl-C and SIGTERM, from a terminal (which signals
    # the whole process group) or a scheduler: the caller's trap stops the
    # experiments, each ssh then returns its worker's status (75 once it has
    # checkpointed), and tee keeps worker 0's last lines.
    (
      trap '' INT TERM
      set +e
      if ((i == 0 && ${STREAM:-0})); then
        gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker="$i" \
          --command="$command" </dev/null 2>&1 | tee -a "$log"
        rc=${PIPESTATUS[0]}
      else
        gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker="$i" \
          --command="$command" </dev/null >>"$log" 2>&1
        rc=$?
      fi
      echo "$rc" >"$log.status"
    ) &
    pids="$pids $!"
  done
  set -- $starts
  i=0
  for pid in $pids; do
    wait_for "$pid"
    log=$LOGS/$what-worker-$i.log
    rc=$(cat "$log.status" 2>/dev/null) || rc=""
    rm -f "$log.status"
    if [[ $rc != 0 ]]; then
      FAILED="$FAILED ${rc:-?}"
      echo "$what failed on worker $i of $WORKERS (exit ${rc:-status unknown: its local \
shell was killed}): see $log" >&2
      tail -n "+$(($1 + 1))" "$log" | tail -n 3 | sed 's/^/    /' >&2
    fi
    shift
    i=$((i + 1))
  done
}
