"""The delivery engine: message building, SMTP sessions and error classes.

It takes plain arguments and never touches Flask globals, so it can be tested
and benchmarked on its own.
"""
