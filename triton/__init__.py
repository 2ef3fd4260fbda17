# This folder is aimesh's Triton model repository (triton/models), not a Python package.
# Without this file, `import triton` from the repo root would find it as a namespace package,
# and torch (which probes `import triton` for the OpenAI compiler) crashes on import.
raise ImportError("triton/ is the aimesh Triton model repository, not the 'triton' package")
