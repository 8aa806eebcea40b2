"""Layer 1, the swappable parts of a VAE, each a registry of small ``nn.Module``s returning
``pyro.distributions`` objects: networks, guide families, priors, likelihoods."""
