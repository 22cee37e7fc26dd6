# shellcheck shell=bash
# deploy/lib/safe-dir.sh - state directories and env files that a root script can trust.
#
# Sourced (it is part of the repository) by deploy/local-stack.sh, deploy/demo.sh, test/run.sh and
# bench/run.sh. A script run as root must not read, source or execute anything from a directory
# another user could have made or written to: /tmp/ferry-stack may have been created, with a
# stack.env in it, by anyone on the host before the stack ever ran. So:
#
#   ferry_own_dir DIR create|check|adopt
#       create  makes DIR with mode 0700 if it is missing (and any missing parent, also 0700);
#               an existing DIR must pass `check`.
#       check   DIR must be a real directory (not a symbolic link), owned by the current user,
#               with mode 0700, and no directory above it writable by another user (unless it
#               is sticky, as /tmp is).
#       adopt   as create, but a DIR of ours that nobody else can write to (0755, as older
#               versions of local-stack.sh made it) is narrowed to 0700 instead of refused.
#       Prints why on stderr and returns 1 when DIR is not safe.
#
#   ferry_env_lines FILE
#       Prints FILE's variables as KEY=VALUE lines after checking FILE (a regular file of ours, no
#       link, writable by nobody else) and its directory (ferry_own_dir check). Each line of FILE
#       must be `export FERRY_NAME=VALUE` with VALUE of [A-Za-z0-9._:/@%+=,-] only (no quotes, no
#       spaces, no $): such a file means the same sourced by a shell and read as data, and nothing
#       in it is ever evaluated. Anything else is refused whole, with the line number.
#
#   ferry_load_env FILE
#       ferry_env_lines, then exports each variable.
#
#   ferry_redact_url URL
#       The URL with the password in its userinfo replaced by *** (nats://user:***@host:port).

# shellcheck disable=SC2034 # FERRY_ENV_VALUE is for the scripts that source this file
FERRY_ENV_LINE='^export (FERRY_[A-Z0-9_]+)=([A-Za-z0-9._:/@%+=,-]*)$'
FERRY_ENV_VALUE='^[A-Za-z0-9._:/@%+=,-]*$'

_ferry_refuse() {
  printf '%s: refusing %s: %s\n' "${PROG:-ferry}" "$1" "$2" >&2
  return 1
}

# _ferry_safe_ancestors DIR: no directory above DIR can be changed by another user: each is owned by
# root or by us, and one that others may write to is sticky (they cannot rename or delete our
# entries in it). A symbolic link above DIR must belong to root or to us too.
_ferry_safe_ancestors() {
  local dir=$1 me p owner mode
  me=$(id -u)
  p=${dir%/*}
  while [ -n "$p" ]; do
    if [ -L "$p" ]; then
      owner=$(stat -c '%u' -- "$p") || { _ferry_refuse "$dir" "cannot stat $p"; return 1; }
      [ "$owner" = 0 ] || [ "$owner" = "$me" ] \
        || { _ferry_refuse "$dir" "$p above it is a symbolic link owned by uid $owner"; return 1; }
    fi
    # A missing parent is made by ferry_own_dir, 0700.
    if [ -e "$p" ]; then
      read -r owner mode < <(stat -L -c '%u %a' -- "$p") || { _ferry_refuse "$dir" "cannot stat $p"; return 1; }
      if [ "$owner" != 0 ] && [ "$owner" != "$me" ]; then
        _ferry_refuse "$dir" "$p above it belongs to uid $owner"; return 1
      fi
      # %a is octal: group write 020, other write 002, sticky 1000.
      if [ $((8#$mode & 8#022)) != 0 ] && [ $((8#$mode & 8#1000)) = 0 ]; then
        _ferry_refuse "$dir" "$p above it is writable by others (mode $mode) and not sticky"; return 1
      fi
    fi
    p=${p%/*}
  done
  return 0
}

ferry_own_dir() {
  local dir=$1 how=$2 me owner mode
  case $dir in /*) ;; *) _ferry_refuse "$dir" "not an absolute path"; return 1 ;; esac
  me=$(id -u)
  _ferry_safe_ancestors "$dir" || return 1
  if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
    [ "$how" != check ] || { _ferry_refuse "$dir" "it does not exist"; return 1; }
    if [ ! -d "${dir%/*}" ] && [ -n "${dir%/*}" ]; then
      ferry_own_dir "${dir%/*}" create || return 1
    fi
    # mkdir fails if the name appeared meanwhile (a planted link or directory): nothing is reused.
    mkdir -m 0700 -- "$dir" || { _ferry_refuse "$dir" "cannot create it"; return 1; }
  fi
  if [ -L "$dir" ]; then
    _ferry_refuse "$dir" "it is a symbolic link; remove it (rm $dir) or choose another path"
    return 1
  fi
  if [ ! -d "$dir" ]; then
    _ferry_refuse "$dir" "it is not a directory; remove it or choose another path"
    return 1
  fi
  read -r owner mode < <(stat -c '%u %a' -- "$dir") || { _ferry_refuse "$dir" "cannot stat it"; return 1; }
  if [ "$owner" != "$me" ]; then
    _ferry_refuse "$dir" "it belongs to uid $owner, not to uid $me who runs this; someone else made it: remove it (rm -rf $dir) or choose another path"
    return 1
  fi
  if [ "$mode" != 700 ]; then
    if [ "$how" = adopt ] && [ $((8#$mode & 8#7022)) = 0 ]; then
      # Ours, and nobody else could ever add or replace anything in it: safe to keep, made private.
      chmod 0700 -- "$dir" || { _ferry_refuse "$dir" "cannot chmod it to 0700"; return 1; }
      return 0
    fi
    _ferry_refuse "$dir" "its mode is $mode, not 700, so others may have written to it; remove it (rm -rf $dir) and run again"
    return 1
  fi
  return 0
}

ferry_env_lines() {
  local file=$1 me owner mode n=0 line
  local out=()
  me=$(id -u)
  ferry_own_dir "${file%/*}" check || return 1
  if [ -L "$file" ] || [ ! -f "$file" ]; then
    _ferry_refuse "$file" "not a regular file"; return 1
  fi
  read -r owner mode < <(stat -c '%u %a' -- "$file") || { _ferry_refuse "$file" "cannot stat it"; return 1; }
  if [ "$owner" != "$me" ] || [ $((8#$mode & 8#022)) != 0 ]; then
    _ferry_refuse "$file" "owned by uid $owner with mode $mode; it must be yours and writable by you only"; return 1
  fi
  # shellcheck disable=SC2094 # $file is only named in the message, never written
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    case $line in ''|'#'*) continue ;; esac
    if [[ $line =~ $FERRY_ENV_LINE ]]; then
      out+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]}")
    else
      _ferry_refuse "$file" "line $n is not 'export FERRY_NAME=VALUE' with a plain value"; return 1
    fi
  done < "$file"
  [ "${#out[@]}" = 0 ] || printf '%s\n' "${out[@]}"
}

ferry_load_env() {
  local lines line
  lines=$(ferry_env_lines "$1") || return 1
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    export "${line%%=*}=${line#*=}"
  done <<< "$lines"
}

ferry_redact_url() {
  # Per comma-separated server: user:password@ becomes user:***@, a token@ becomes ***@.
  printf '%s\n' "$1" | sed -E 's#(://[^:@/,]*:)[^,]*@#\1***@#g; s#(://)[^:@/,]+@#\1***@#g'
}
