# bash completion for mirrorfs: the verbs and the flags of each (as
# `mirrorfs --help-all` lists them), folders for STORE and MOUNTPOINT,
# files for keys, groups for --control-group, nothing for numbers, sizes,
# endpoints and names.
# Installed as /usr/share/bash-completion/completions/mirrorfs.

_mirrorfs() {
  local cur prev words cword
  if declare -F _init_completion >/dev/null; then
    _init_completion || return
  else
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  fi

  local verbs="mount serve stop status peer sync fracture verify promote demote resolve keygen"
  local verb="" sub="" i
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      -*) ;;
      *)
        if [[ -z $verb ]]; then
          verb=${words[i]}
        elif [[ $verb == peer && -z $sub ]]; then
          sub=${words[i]}
        fi
        ;;
    esac
  done

  _mirrorfs_dirs() { mapfile -t COMPREPLY < <(compgen -d -- "$cur"); }
  _mirrorfs_files() { mapfile -t COMPREPLY < <(compgen -f -- "$cur"); }

  # Values of options.
  case $prev in
    --mode)
      mapfile -t COMPREPLY < <(compgen -W "sync async" -- "$cur")
      return ;;
    --key | --authorized-keys)
      _mirrorfs_files
      return ;;
    --mount)
      _mirrorfs_dirs
      return ;;
    --control-group)
      mapfile -t COMPREPLY < <(compgen -g -- "$cur")
      return ;;
    # Free text and numbers: nothing to offer (not file names either).
    --listen | --peer | --name | -o | --timeout | --peer-timeout | --busy-poll | \
      --intent-extent | --intent-budget | --resync-rate | --rate)
      return ;;
  esac

  if [[ -z $verb ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$verbs --help --help-all --version" -- "$cur")
    return
  fi

  local opts=""
  case $verb in
    mount) opts="--name --listen --peer --mode -f --foreground -o --intent-extent --intent-budget --resync-rate --key --authorized-keys --insecure --control-group --cached-writes --busy-poll --peer-timeout" ;;
    serve) opts="--listen --name -f --foreground --key --authorized-keys --insecure --control-group --cached-writes --busy-poll --peer-timeout" ;;
    stop | fracture) opts="" ;;
    status) opts="--json" ;;
    sync) opts="--peer --wait --timeout" ;;
    verify) opts="--peer --repair --json --rate" ;;
    promote) opts="--mount --force" ;;
    demote) opts="--listen" ;;
    resolve) opts="--discard-local --keep-local" ;;
    keygen)
      if [[ $cur != -* ]]; then
        _mirrorfs_files
        return
      fi ;;
    peer)
      if [[ -z $sub ]]; then
        mapfile -t COMPREPLY < <(compgen -W "add remove list -h --help --help-all" -- "$cur")
        return
      fi
      case $sub in
        list) opts="--json" ;;
      esac
      ;;
  esac

  if [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$opts -h --help --help-all" -- "$cur")
  else
    # STORE and MOUNTPOINT are folders.
    _mirrorfs_dirs
  fi
}
complete -F _mirrorfs mirrorfs
