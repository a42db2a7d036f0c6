"""The suite's measurement CLIs, one module each, run as ``python -m dqss.bench.<name>``; nothing in the library
imports them.  ``python -m dqss.bench`` lists them."""
