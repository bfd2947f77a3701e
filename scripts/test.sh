#!/usr/bin/env bash
# Start a devstack in a temp dir, run pytest against it, store the reports as artifacts, stop it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" NO_ALBUMENTATIONS_UPDATE=1
# The browser tests drive Debian's chromium; Playwright's own browser download cannot be used.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); else apt=(sudo apt-get); fi
  echo "installing chromium with ${apt[*]} ..."
  { "${apt[@]}" update -q && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q chromium; } \
    >/dev/null || { echo "could not install chromium (apt-get install -y chromium)" >&2; exit 1; }
fi
# Label Studio's server lives in a venv of its own (.venv-label-studio/, ~1 GB, once).
python -m pixelpipe.devstack.label_studio install || exit 1
stack_dir=$(mktemp -d -t pixelpipe-test-XXXXXX)
trap 'pixelpipe devstack down --dir "$stack_dir" >/dev/null; rm -rf "$stack_dir"' EXIT
pixelpipe devstack up --dir "$stack_dir" || exit 1
eval "$(pixelpipe devstack env --dir "$stack_dir")"
export PIXELPIPE_EXTERNAL_STACK=1
rm -rf reports && mkdir -p reports
started=$(date +%s)
python -m pytest --junitxml=reports/junit.xml -o junit_family=xunit2 \
  --durations=15 "$@" 2>&1 | tee reports/pytest.log
rc=${PIPESTATUS[0]}
echo "test suite: $(( $(date +%s) - started ))s" | tee -a reports/pytest.log
# TEST_PLAN "Artifacts and Reporting": the logs land in the artifacts bucket and in MLflow.
pixelpipe report upload reports/ || { echo "test reports did not land" >&2; exit 1; }
exit "$rc"
