"""Layer 0, what every other layer stands on: errors, registries, devices and the run's
configuration (plain dataclasses, torch-free). Imports nothing else of pyro_vae."""
