# Sourced by run_commands.sh and batch_command.sh (bash): paths the user gives (path options,
# overrides of keys ending in root / model_path / _path / _file / _dir, the operator's kernel= and
# mask= files, and the save_dir
# variables) are relative to the caller's folder; the configs' own paths (model_path, data root)
# stay relative to the repository, where main.py runs.
#   caller_dir=$PWD; resolve_user_args "$@"   ->  user_args=( ...the arguments, made absolute... )
#   abs_path PATH                             ->  PATH made absolute against caller_dir
# Not paths, left as given: empty (also a quoted empty '""' or "''", as main.py reads it), absolute, ~, null.
abs_path() { case "$1" in ""|'""'|"''"|null|/*|"~"*) printf '%s' "$1" ;; *) printf '%s/%s' "$caller_dir" "$1" ;; esac; }

resolve_user_args() {
  user_args=()
  local path_option="" arg
  for arg in "$@"; do
    if [ -n "$path_option" ]; then
      arg="$(abs_path "$arg")"; path_option=""
    else
      case "$arg" in
        --save_dir|--model_config|--diffusion_config|--task_config|--measurement_dir) path_option=1 ;;
        --save_dir=*|--model_config=*|--diffusion_config=*|--task_config=*|--measurement_dir=*) arg="${arg%%=*}=$(abs_path "${arg#*=}")" ;;
        -*) ;;
        *.root=*|*.model_path=*|*_path=*|*_file=*|*_dir=*|*.operator.kernel=*|*.operator.mask=*)
          arg="${arg%%=*}=$(abs_path "${arg#*=}")" ;;
      esac
    fi
    user_args+=("$arg")
  done
}
