# bash completion for mirrorfs (DESIGN.md's command line).
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
    --listen | --peer | --name | --timeout | --peer-timeout | -o)
      return ;;
  esac

  if [[ -z $verb ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$verbs --help --help-all --version" -- "$cur")
    return
  fi

  local opts=""
  case $verb in
    mount) opts="--name --listen --peer --mode --peer-timeout -f --foreground -o --key --authorized-keys --insecure --control-group --cached-writes --busy-poll --help" ;;
    serve) opts="--listen --name --peer-timeout -f --foreground --key --authorized-keys --insecure --control-group --cached-writes --busy-poll --help" ;;
    stop | demote) opts="--help" ;;
    status) opts="--json --help" ;;
    sync) opts="--peer --wait --timeout --help" ;;
    fracture) opts="--help" ;;
    verify) opts="--peer --repair --help" ;;
    promote) opts="--mount --force --help" ;;
    resolve) opts="--discard-local --keep-local --help" ;;
    keygen)
      _mirrorfs_files
      return ;;
    peer)
      if [[ -z $sub ]]; then
        mapfile -t COMPREPLY < <(compgen -W "add remove list --help" -- "$cur")
        return
      fi
      case $sub in
        list) opts="--json --help" ;;
        remove) opts="--force --help" ;;
        *) opts="--help" ;;
      esac
      ;;
  esac

  if [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
  else
    # STORE and MOUNTPOINT are folders.
    _mirrorfs_dirs
  fi
}
complete -F _mirrorfs mirrorfs
