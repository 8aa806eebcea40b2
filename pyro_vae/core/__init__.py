"""Layer 0, what every other layer stands on: errors, registries, devices and the run's
configuration (plain dataclasses, torch-free, each field declaring its option of `pyro-vae train`:
options.py). Imports nothing else of pyro_vae."""
