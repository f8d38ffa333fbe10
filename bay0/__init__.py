"""bay0: the Spine's PID-1 warden, and the owner of every artifact format it trusts.

Only the Python standard library and ``cryptography`` may be imported from here
(``tests/test_architecture.py`` enforces it).
"""

__version__ = "0.1.0"
