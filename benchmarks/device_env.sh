# Sourced by the device scripts: where ortools is missing (the GPU machine has no package index), installs
# the wheels carried in .whl/ (ortools, timm, ...) into /tmp/site; puts the repository on PYTHONPATH.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if ! python3 -c "import ortools" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
