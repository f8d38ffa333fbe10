"""Pure format code: bytes and values in, values or errors out.

No ``open``, no subprocess, no environment, no clock: callers pass ``now``.
"""
