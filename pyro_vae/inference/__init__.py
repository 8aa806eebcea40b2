"""Layer 4, fitting and scoring a model: the objectives, the trainers, the held-out bounds, the
learning-rate schedules, data-parallel replicas; fast/ holds the fast paths, the only code that
rests on private torch and Pyro APIs."""
