"""`python -m backbones.seed_weights`: copy the packaged weight files into the torch hub cache."""
from backbones.weights import seed_hub_cache

for path in seed_hub_cache():
    print(f"weights ready: {path}")
