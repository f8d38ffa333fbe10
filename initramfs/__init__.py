"""The busybox `/init` of the Spine and its shell libraries (package data, not Python code)."""
