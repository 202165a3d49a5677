"""The console scripts, one module each: a Hydra entry point that hands the composed config to the
layer that does the work (engine/, export/, reporting/). ``cli.py`` is the shell they run in; no
command imports another."""
