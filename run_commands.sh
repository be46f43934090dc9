#!/usr/bin/env bash
# Run one of the paper's configurations: configs/<dataset>/<sampling_type>/<task_config>.yaml.
# Set the variables in the environment, e.g.
#   dataset=FFHQ sampling_type=DDIM task_config=motion_deblur_config bash run_commands.sh
# With no variables set it runs the embedded MNIST prior (CoDPS+, DDIM 100, motion deblurring)
# on samples/mnist/ in well under a minute on a CPU.
# Extra arguments pass through to main.py, e.g. --num_images 10 --seed 225 task.conditioning.params.scale=0.1
# Relative paths you pass (--save_dir, --*_config, the environment's save_dir, overrides of keys
# ending in root, model_path, _path, _file or _dir, and operator.kernel= / operator.mask= files) are
# taken from your working folder; the
# default save_dir results/<dataset>/<sampling_type> and the paths inside the configs are in the
# repository. The exit status is main.py's (2: bad input such as a missing checkpoint or data folder).
set -u

dataset="${dataset:-MNIST}"                      # MNIST, FFHQ, IMAGENET, CELEBAHQ (diffusers) or GMM
sampling_type="${sampling_type:-DDIM}"           # DDIM (CoDPS+) or DDPM (CoDPS; dps_* configs: DPS)
task_config="${task_config:-motion_deblur_config}"  # any <task>_config.yaml of configs/<dataset>/<sampling_type>/
if [ -n "${save_dir:-}" ]; then save_dir_given=1; else save_dir_given=""; fi
save_dir="${save_dir:-results}"                  # outputs: <save_dir>/<dataset>/<sampling_type>/<task>/
PYTHON="${PYTHON:-python}"

# Paths the user gives are relative to the caller's folder (util/user_paths.sh).
caller_dir="$PWD"
# shellcheck source=util/user_paths.sh
. "$(dirname "$0")/util/user_paths.sh"
resolve_user_args "$@"
if [ -n "$save_dir_given" ]; then save_dir="$(abs_path "$save_dir")"; fi

config_dir="configs/${dataset}/${sampling_type}"
extra=()
if [ "$dataset" = MNIST ]; then
  # The embedded prior (ckpts/mnist32.pt) on the 16 test digits in samples/mnist/, in one batch.
  extra=(--batch_size 16)
fi
cmd=("$PYTHON" main.py
     --model_config "${config_dir}/model_config.yaml"
     --diffusion_config "${config_dir}/diffusion_config.yaml"
     --task_config "${config_dir}/${task_config%.yaml}.yaml"
     --save_dir "$save_dir" "${extra[@]}" "${user_args[@]}")

what="dataset=${dataset} sampling_type=${sampling_type} task_config=${task_config}"
if [ "$dataset" = MNIST ]; then
  echo "Running the embedded MNIST prior (ckpts/mnist32.pt) on samples/mnist/ (dataset=FFHQ for the paper's configuration): ${what}: ${cmd[*]}"
else
  echo "Running ${what}: ${cmd[*]}"
fi
cd "$(dirname "$0")" || exit 2
"${cmd[@]}"
