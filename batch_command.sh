#!/usr/bin/env bash
# Sweep the paper's configurations: every task config of every configs/<dataset>/<sampling type>/
# folder (all its *_config.yaml but model_config and diffusion_config) runs main.py once, into
# results/<dataset>/<sampling type>/<task>/ (main.py names the folder after the task config). A
# failing combination does not stop the others; a table of what passed and failed is printed at
# the end, and the exit status is 1 if any failed.
# Lists can be narrowed from the environment (space-separated), e.g.
#   datasets="FFHQ" sampling_types="DDIM" tasks="inpainting_config" bash batch_command.sh --num_images 10
# (an explicit task list is run in every folder; a config a folder lacks then fails with exit 2).
# Extra arguments pass through to every main.py run; relative paths among them (and save_base_dir)
# are taken from your working folder, as in run_commands.sh.
set -u
# Paths the user gives are relative to the caller's folder (util/user_paths.sh).
caller_dir="$PWD"
# shellcheck source=util/user_paths.sh
. "$(dirname "$0")/util/user_paths.sh"
resolve_user_args "$@"
if [ -n "${save_base_dir:-}" ]; then save_base_dir="$(abs_path "$save_base_dir")"; fi
cd "$(dirname "$0")" || exit 2

read -r -a datasets_arr <<< "${datasets:-FFHQ IMAGENET}"
read -r -a samplers_arr <<< "${sampling_types:-DDIM DDPM}"
tasks_env="${tasks:-}"
seed="${seed:-22}"
save_base_dir="${save_base_dir:-results}"
PYTHON="${PYTHON:-python}"

results=()
failed=0
for dataset in "${datasets_arr[@]}"; do
  for sampling_type in "${samplers_arr[@]}"; do
    config_dir="configs/${dataset}/${sampling_type}"
    if [ -n "$tasks_env" ]; then
      read -r -a tasks_arr <<< "$tasks_env"
    else   # exactly the task configs this folder has
      tasks_arr=()
      for f in "${config_dir}"/*_config.yaml; do
        [ -e "$f" ] || continue
        name="$(basename "$f" .yaml)"
        case "$name" in model_config|diffusion_config) continue ;; esac
        tasks_arr+=("$name")
      done
      if [ "${#tasks_arr[@]}" -eq 0 ]; then
        echo "=== ${config_dir}: no task configs (is ${dataset}/${sampling_type} a folder of configs/?)"
        results+=("$(printf '%-10s %-6s %-26s %-18s %6ss' "$dataset" "$sampling_type" "-" "FAILED (no configs)" 0)")
        failed=$((failed + 1))
        continue
      fi
    fi
    for task in "${tasks_arr[@]}"; do
      task="${task%.yaml}"
      cmd=("$PYTHON" main.py
           --model_config "${config_dir}/model_config.yaml"
           --diffusion_config "${config_dir}/diffusion_config.yaml"
           --task_config "${config_dir}/${task}.yaml"
           --save_dir "$save_base_dir" --seed "$seed" "${user_args[@]}")
      echo "=== ${dataset}/${sampling_type}/${task}: ${cmd[*]}"
      start=$SECONDS
      "${cmd[@]}"
      status=$?
      if [ "$status" -eq 0 ]; then outcome="passed"; else outcome="FAILED (exit ${status})"; failed=$((failed + 1)); fi
      results+=("$(printf '%-10s %-6s %-26s %-18s %6ss' "$dataset" "$sampling_type" "$task" "$outcome" "$((SECONDS - start))")")
      echo "=== ${dataset}/${sampling_type}/${task}: ${outcome}"
    done
  done
done

echo
printf '%-10s %-6s %-26s %-18s %7s\n' dataset sampler task result time
for line in "${results[@]}"; do echo "$line"; done
echo "${#results[@]} runs, $((${#results[@]} - failed)) passed, ${failed} failed"
[ "$failed" -eq 0 ]
