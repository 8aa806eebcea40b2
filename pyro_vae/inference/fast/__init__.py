"""The fast training step: the eager step recorded once as a graph of torch operations and
replayed (replay.py), what a component must promise for that (contract.py), and on a GPU the
replay and the optimizer's update captured as one CUDA graph (cuda_graph.py). Every private torch
and Pyro API the package uses is here."""
